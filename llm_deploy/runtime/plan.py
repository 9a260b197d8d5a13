"""The fast step: a VM function checked once per shape, then replayed as a native launch list.

The VM's instructions (vm.py) check and dispatch every value on every call: a decode step of the
default model is ~700 instructions, ~400 kernel calls and ~700 parameter checks, ~15-20 ms of
Python for ~5-30 ms of kernels. A `PlannedFunction` does that work once per *shape key* and keeps
the result, a `Plan`: one flat list of checked launches with their scalar arguments, in the
format of targets/llvm/launcher.py, run by one native call.

What may differ between two calls of one plan, and how each is handled:
- weights and other parameters of fully static shape: checked once, then only compared by
  identity (`is`) with the ones the plans were built for; another object is checked and drops
  the plans (their pointers are stale).
- the other parameters (token ids, the KV cache) and what value externs return (the cache's step
  arrays and pools): the *dynamic leaves*. Their shapes, strides and dtypes form the plan's key;
  their data pointers are read natively at every call from the objects themselves.
- outputs of `alloc` (returned to the caller): allocated fresh at every call.
Everything else (planned storage views, constants, shapes, the values of symbolic variables)
follows from the key and is fixed in the plan.

Value externs (`call_extern_value`) are getters of arrays their owner holds (the KV cache's step
arrays and pools); a planned function calls them first, in program order, before any kernel, so
their results can key the plan. Functions whose externs take computed arguments, or with `if` or
function calls, run on the VM's instructions (still skipping the checks of identical weights).

Like the VM's planned storage, a plan's tables are per VM: one call of a function at a time.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_deploy.runtime.symbolic import Evaluator, compile_expr
from llm_deploy.runtime.vm import VMError, _matcher, _static_params, check_static

MAX_PLANS = 64  # per function: decode keys change with the batch size and the page count
MAX_BUFFERS = 64  # buffer arguments of one kernel (the launch loop's scratch array)

# A ref says where a value comes from at each call:
#   ("static", obj)        the same object at every call of the plan
#   ("leaf", i)            dynamic leaf i
#   ("alloc", j)           the j-th fresh allocation of the call
#   ("reshape", ref, shape) another shape of a dynamic tensor (same data pointer)
#   ("tuple", (ref, ...))
Ref = tuple


class NotPlannable(Exception):
    """The function cannot be planned (it runs on the VM's instructions); the reason is the text."""


@dataclass
class _Structure:
    """What a function's dynamic leaves are, from its instructions alone (no values)."""

    roots: list[tuple]  # ("param", index) | ("extern", fn, ((is_root, root_index_or_value), ...))
    leaves: list[tuple[int, tuple[int, ...]]]  # (root, item path)
    leaf_of: dict[str, int] = field(default_factory=dict)  # register -> leaf, where it is one


def _analyze(func: Mapping[str, Any], static: Sequence[int], externs: Mapping[str, Callable]) -> _Structure:
    params = func["params"]
    static_set = set(static)
    roots: list[tuple] = []
    leaves: list[tuple[int, tuple[int, ...]]] = []
    leaf_index: dict[tuple[int, tuple[int, ...]], int] = {}
    where: dict[str, tuple[int, tuple[int, ...]]] = {}  # register -> (root, path)
    consts: dict[str, Any] = {}  # registers of literal values (prim ints, strings)

    def leaf(path: tuple[int, tuple[int, ...]]) -> int:
        if path not in leaf_index:
            leaf_index[path] = len(leaves)
            leaves.append(path)
        return leaf_index[path]

    for i, p in enumerate(params):
        if i not in static_set:
            roots.append(("param", i))
            where[p] = (len(roots) - 1, ())
            leaf(where[p])
    for ins in func["instrs"]:
        op = ins["op"]
        if op in ("if", "call"):
            raise NotPlannable(f"an {op!r} instruction")
        if op == "call_extern_value":
            args = []
            for a in ins["args"]:
                if a in where and not where[a][1]:
                    args.append((True, where[a][0]))
                elif a in consts:
                    args.append((False, consts[a]))
                else:
                    raise NotPlannable(f"extern {ins['name']} takes a computed argument {a}")
            if ins["name"] not in externs:
                raise NotPlannable(f"extern {ins['name']} is not registered")
            roots.append(("extern", externs[ins["name"]], tuple(args)))
            where[ins["dst"]] = (len(roots) - 1, ())
            leaf(where[ins["dst"]])
        elif op in ("match", "copy") and ins["src"] in where:
            where[ins["dst"]] = where[ins["src"]]
        elif op == "get_item" and ins["src"] in where:
            root, path = where[ins["src"]]
            where[ins["dst"]] = (root, (*path, ins["index"]))
            leaf(where[ins["dst"]])
        elif op == "prim" and isinstance(ins["value"], int):
            consts[ins["dst"]] = ins["value"]
        elif op == "string":
            consts[ins["dst"]] = ins["value"]
    return _Structure(roots, leaves, {r: leaf_index[w] for r, w in where.items()})


@functools.lru_cache(maxsize=4096)
def _expr(text: str | int) -> Evaluator:
    """compile_expr, once per expression text (plans are rebuilt per shape key)."""
    return compile_expr(text)


def _leaf_key(x: Any) -> Any:
    """What of a dynamic value a plan depends on: an array's type, shape, strides and dtype (not
    its data); a sequence's length (its items are leaves of their own); a scalar's value."""
    t = type(x)
    if t is np.ndarray:  # dtype by number and byte order: hashing dtype objects is slow
        dt = x.dtype
        return (x.shape, x.strides, dt.num, dt.isnative)
    if t is tuple or t is list:
        return (t, len(x))
    shape = getattr(x, "shape", None)
    if shape is not None:
        return (t, tuple(shape), getattr(x, "strides", None), str(getattr(x, "dtype", "")))
    try:
        hash(x)
    except TypeError:
        return t
    return (t, x)  # ints, floats, strings; objects by identity (the KV cache)


@dataclass
class Plan:
    """Checked launches for one key: native segments and, between them, DPS Python externs."""

    segments: list[tuple]  # ("native", code, n launches, code address) | ("extern", fn, (ref, ...))
    allocs: list[tuple[tuple[int, ...], str]]
    ret: Ref
    objs: np.ndarray  # int64: addresses of the leaves then the allocations, rewritten per call
    bufs: np.ndarray  # the launch loop's scratch
    kernel_calls: int
    alloc_bytes: int
    keep: list[Any]  # objects whose data pointers the code holds
    objs_address: int = 0
    bufs_address: int = 0

    def launches(self) -> list[tuple[int, np.ndarray]]:
        """(kernel address, its words in the launch loop's code) of every native launch, in order
        (the words: fn, nbufs, nvars, the buffer refs, the vars; see targets/llvm/launcher.py)."""
        out = []
        for seg in self.segments:
            if seg[0] != "native":
                continue
            code, at = seg[1], 0
            for _ in range(seg[2]):
                end = at + 3 + int(code[at + 1]) + int(code[at + 2])
                out.append((int(code[at]), code[at:end]))
                at = end
        return out


class PlannedFunction:
    """`vm[name]` under the fast step: same arguments, results and errors as the VM's path."""

    def __init__(
        self, vm: Any, name: str, func: Mapping[str, Any], compile_slow: Callable[[], Callable[..., Any]]
    ):
        self.vm, self.name, self.func = vm, name, func
        self._compile_slow, self._slow = compile_slow, None
        self.params = func["params"]
        self.static = _static_params(func)
        self._get_static = (lambda args: ()) if not self.static else self._getter(self.static)
        self.bound: tuple = ()
        self.plans: dict[tuple, Plan] = {}
        self.unplannable: str | None = None
        self.structure = _analyze(func, self.static, vm.externs)
        leaves = self.structure.leaves
        self._shallow = (
            [(r, path[0] if path else None) for r, path in leaves]
            if all(len(p) <= 1 for _, p in leaves)
            else None
        )
        self.modules = self._check_kernels()
        self.runner: tuple[Callable[..., None], int] | None = None  # the launch loop, at first build
        infos, static = func["param_infos"], set(self.static)
        self.param_checks = {
            i: _matcher(infos[i], f"{name}: parameter {p}")
            for i, p in enumerate(self.params)
            if i not in static
        }
        self.instr_checks = {
            k: _matcher(ins["info"], f"{name}: match_cast {ins['dst']}")
            for k, ins in enumerate(func["instrs"])
            if ins["op"] == "match"
        }

    @staticmethod
    def _getter(indices: Sequence[int]) -> Callable[[tuple], tuple]:
        get = operator.itemgetter(*indices)
        return (lambda args: (get(args),)) if len(indices) == 1 else get

    def slow(self, *args: Any) -> Any:
        """The call on the VM's instructions (compiled on first need)."""
        if self._slow is None:
            self._slow = self._compile_slow()
        return self._slow(*args)

    def _check_kernels(self) -> list[Any]:
        """The modules of the function's kernels, which must all have a native packed entry.
        Also the errors the instruction path gives when compiled: unknown kernels, constants."""
        modules = {}
        for ins in self.func["instrs"]:
            op = ins["op"]
            if not hasattr(self.vm, f"_op_{op}"):
                raise VMError(f"{self.name}: unknown instruction {op!r}")
            if op == "const" and ins["name"] not in self.vm.constants:
                raise VMError(f"{self.name}: constant {ins['name']!r} is missing from the artifact")
            if op == "call_tir":
                if ins["kernel"] not in self.vm.kernels:
                    raise VMError(f"{self.name}: kernel {ins['kernel']!r} is not in the kernel library")
                kernel = self.vm.kernels[ins["kernel"]]
                if not hasattr(kernel, "launcher"):
                    raise NotPlannable(f"kernel {ins['kernel']} has no native entry")
                modules[id(kernel.module)] = kernel.module
        return list(modules.values())

    def __call__(self, *args: Any) -> Any:
        found = self.plan_for(*args)
        if found is None:
            return self.slow(*args)
        return self._replay(*found)

    def plan_for(self, *args: Any) -> tuple[Plan, list[Any]] | None:
        """The checked plan for these arguments (built on first use) and their leaves, or None
        when the call takes the VM's path (nothing has run yet then)."""
        if self.unplannable is not None or len(args) != len(self.params):
            return None
        statics = self._get_static(args)
        if len(statics) != len(self.bound) or not all(map(operator.is_, statics, self.bound)):
            self._bind(statics)
        leaves = self._leaves(args)
        key = tuple(map(_leaf_key, leaves))
        plan = self.plans.get(key)
        if plan is None:
            try:
                plan = self._build(args, leaves)
            except NotPlannable as e:
                self.unplannable = str(e)
                return None
            if len(self.plans) >= MAX_PLANS:
                del self.plans[next(iter(self.plans))]
            self.plans[key] = plan
        return plan, leaves

    # -- per call
    def _leaves(self, args: tuple) -> list[Any]:
        roots: list[Any] = []
        for spec in self.structure.roots:
            if spec[0] == "param":
                roots.append(args[spec[1]])
            else:
                roots.append(spec[1](*[roots[v] if is_root else v for is_root, v in spec[2]]))
        if self._shallow is not None:  # every leaf is a root or an item of one
            return [roots[r] if i is None else roots[r][i] for r, i in self._shallow]
        out = []
        for r, path in self.structure.leaves:
            x = roots[r]
            for i in path:
                x = x[i]
            out.append(x)
        return out

    def _replay(self, plan: Plan, leaves: list[Any]) -> Any:
        for module in self.modules:
            if module.closed:
                raise VMError(f"{self.name}: the kernels' module was closed (the code is freed)")
        allocs = self.bind_objects(plan, leaves)
        run, offset = self.runner or (None, 0)  # None: a function without kernels
        objs_address, bufs_address = plan.objs_address, plan.bufs_address
        for seg in plan.segments:
            if seg[0] == "native":
                run(seg[3], seg[2], objs_address, offset, bufs_address)
            else:
                seg[1](*[self._resolve(r, leaves, allocs) for r in seg[2]])
        stats = self.vm.stats
        stats["kernel_calls"] += plan.kernel_calls
        if allocs:
            stats["allocs"] += len(allocs)
            stats["alloc_bytes"] += plan.alloc_bytes
        return self._resolve(plan.ret, leaves, allocs)

    def bind_objects(self, plan: Plan, leaves: list[Any]) -> list[Any]:
        """The plan's per-call tensors, allocated, with every leaf's and allocation's object
        address written where the launch loop reads them; the caller keeps leaves and
        allocations alive while the plan's launches run."""
        alloc = self.vm.device.alloc
        allocs = [alloc(shape, dtype) for shape, dtype in plan.allocs]
        plan.objs[:] = [*map(id, leaves), *map(id, allocs)]
        return allocs

    def _resolve(self, ref: Ref, leaves: list[Any], allocs: list[Any]) -> Any:
        kind = ref[0]
        if kind == "alloc":
            return allocs[ref[1]]
        if kind == "leaf":
            return leaves[ref[1]]
        if kind == "static":
            return ref[1]
        if kind == "reshape":
            return self.vm.device.reshape(self._resolve(ref[1], leaves, allocs), ref[2])
        return tuple(self._resolve(r, leaves, allocs) for r in ref[1])

    def _bind(self, statics: tuple) -> None:
        """Check weights that are not the ones bound before; the plans held their pointers."""
        infos = self.func["param_infos"]
        for i, a in zip(self.static, statics):
            check_static(a, infos[i], f"{self.name}: parameter {self.params[i]}")
        self.bound = statics
        self.plans.clear()

    # -- building a plan: the VM's instructions, interpreted over values and where they come from
    def _build(self, args: tuple, leaves: list[Any]) -> Plan:
        vm, func, leaf_of = self.vm, self.func, self.structure.leaf_of
        nleaves = len(leaves)
        env: dict[str, int] = {}
        regs: dict[str, tuple[Any, Ref]] = {}
        static = set(self.static)
        for i, p in enumerate(self.params):
            if i in static:
                regs[p] = (args[i], ("static", args[i]))
            else:
                self.param_checks[i](args[i], env)
                regs[p] = (args[i], ("leaf", leaf_of[p]))
        segments: list[tuple] = []
        code: list[int] = []
        launches = kernel_calls = alloc_bytes = 0
        allocs: list[tuple[tuple[int, ...], str]] = []
        keep: list[Any] = []

        def flush() -> None:
            nonlocal launches
            if launches:
                array = np.array(code, dtype=np.int64)
                keep.append(array)
                segments.append(("native", array, launches, array.ctypes.data))
                code.clear()
                launches = 0

        def pointer(obj: Any, ref: Ref) -> int:
            kind = ref[0]
            if kind == "static":
                keep.append(obj)
                return obj.ctypes.data
            if kind == "leaf":
                return -(ref[1] + 1)
            if kind == "alloc":
                return -(nleaves + ref[1] + 1)
            if kind == "reshape":  # a view at the same address: the base's pointer
                return pointer(None, ref[1])
            raise NotPlannable(f"a kernel argument of kind {kind}")

        for k, ins in enumerate(func["instrs"]):
            op = ins["op"]
            if op == "call_tir":
                kernel = vm.kernels[ins["kernel"]]
                if self.runner is None:
                    self.runner = kernel.launcher()
                elif kernel.launcher() != self.runner:
                    raise NotPlannable("kernels of two launch loops")
                values = [regs[a] for a in (*ins["args"], *ins["outs"])]
                scalars = [_expr(s)(env) for s in ins.get("scalars", [])]
                bound = kernel.bind(*[v[0] for v in values], *scalars)
                buffers = [pointer(*values[pi]) for pi in kernel.buffer_params()]
                if len(buffers) > MAX_BUFFERS:
                    raise NotPlannable(f"kernel {ins['kernel']} takes {len(buffers)} buffers")
                code += [kernel.address, len(buffers), len(bound), *buffers, *bound]
                launches += 1
                kernel_calls += 1
            elif op == "alloc_tensor":
                storage, ref = regs[ins["storage"]]
                if ref[0] != "static":
                    raise NotPlannable("a tensor in dynamic storage")
                shape = tuple(_expr(d)(env) for d in ins["shape"])
                view = vm.view(storage, int(ins["offset"]), shape, ins["dtype"])
                regs[ins["dst"]] = (view, ("static", view))
            elif op == "reshape":
                obj, ref = regs[ins["src"]]
                shape = tuple(_expr(d)(env) for d in ins["shape"])
                new = vm.device.reshape(obj, shape)
                regs[ins["dst"]] = (new, ("static", new) if ref[0] == "static" else ("reshape", ref, shape))
            elif op == "match":
                obj, ref = regs[ins["src"]]
                self.instr_checks[k](obj, env)
                regs[ins["dst"]] = (obj, ref)
            elif op == "copy":
                regs[ins["dst"]] = regs[ins["src"]]
            elif op == "get_item":
                obj, ref = regs[ins["src"]]
                item = obj[ins["index"]]
                if ins["dst"] in leaf_of:
                    regs[ins["dst"]] = (leaves[leaf_of[ins["dst"]]], ("leaf", leaf_of[ins["dst"]]))
                elif ref[0] == "tuple":
                    regs[ins["dst"]] = (item, ref[1][ins["index"]])
                elif ref[0] == "static":
                    regs[ins["dst"]] = (item, ("static", item))
                else:
                    raise NotPlannable(f"an item of a {ref[0]} value")
            elif op == "call_extern_value":
                i = leaf_of[ins["dst"]]
                regs[ins["dst"]] = (leaves[i], ("leaf", i))
            elif op == "alloc":
                shape = tuple(_expr(d)(env) for d in ins["shape"])
                obj = vm.device.alloc(shape, ins["dtype"])
                regs[ins["dst"]] = (obj, ("alloc", len(allocs)))
                allocs.append((shape, ins["dtype"]))
                alloc_bytes += int(np.prod(shape, dtype=np.int64)) * np.dtype(ins["dtype"]).itemsize
            elif op == "alloc_storage":
                block = vm.storage_block(ins["key"], int(ins["bytes"]))
                regs[ins["dst"]] = (block, ("static", block))
            elif op == "call_extern":
                flush()
                fn = vm.extern(ins["name"], self.name)
                refs = tuple(regs[a][1] for a in (*ins["args"], *ins["outs"]))
                segments.append(("extern", fn, refs))
            elif op == "tuple":
                fields = [regs[f] for f in ins["fields"]]
                regs[ins["dst"]] = (tuple(f[0] for f in fields), ("tuple", tuple(f[1] for f in fields)))
            elif op in ("prim", "shape", "const", "string"):
                value = self._literal(ins, env)
                regs[ins["dst"]] = (value, ("static", value))
            elif op != "free":
                raise NotPlannable(f"instruction {op!r}")
        flush()
        nobjs = nleaves + len(allocs)
        objs, bufs = np.zeros(max(nobjs, 1), dtype=np.int64), np.zeros(MAX_BUFFERS, dtype=np.int64)
        plan = Plan(segments, allocs, regs[func["ret"]][1], objs, bufs, kernel_calls, alloc_bytes, keep)
        plan.objs_address, plan.bufs_address = objs.ctypes.data, bufs.ctypes.data
        if nobjs == 0:
            plan.objs = objs[:0]
        return plan

    def _literal(self, ins: Mapping[str, Any], env: dict[str, int]) -> Any:
        op = ins["op"]
        if op == "prim":
            return _expr(ins["value"])(env)
        if op == "shape":
            return tuple(_expr(v)(env) for v in ins["values"])
        if op == "const":
            return self.vm.constants[ins["name"]]
        return ins["value"]
