"""The virtual machine: runs a graph function lowered to a program of data (no Python code).

A program is JSON: per function, its parameter names and infos and a list of instructions
over named registers. Kernels (compiled tensor programs) and externs (library functions) are
called by name in destination-passing style; the VM allocates their outputs. Symbolic shape
values live in an environment that parameter checks and match_casts fill.

The low-overhead step (`fast_step`, on by default; `fast_step=False` or the environment variable
LLMD_FAST_STEP=0 turns it off, e.g. to measure what it saves):
- parameters of fully static shape (the weights) are checked once, then only compared by
  identity with the objects checked last;
- planned tensors are cached views (the same storage, offset, shape and dtype give the same array
  object), so nothing is recomputed per call;
- where every kernel has a native packed entry (the LLVM target), a function runs as a plan
  (runtime/plan.py): its launches checked once per shape key, replayed by one native loop.
GPU targets keep their own dispatch path (their devices record a submission per step); they get
the first point.
"""

from __future__ import annotations

import contextlib
import gc
import math
import mmap
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_deploy.runtime.symbolic import Evaluator, compile_expr

Regs = dict[str, Any]
Env = dict[str, int]
Step = Callable[[Regs, Env], None]


class VMError(RuntimeError):
    """A program that cannot run: unknown kernel, bad arguments, a failed shape check."""


class MatchError(VMError, ValueError):
    """A run-time shape check failed; the message names the value, the variable and both shapes."""


@dataclass
class Device:
    """Where tensors live. The CPU device allocates numpy arrays; GPU targets subclass it."""

    name: str = "cpu"

    def alloc(self, shape: tuple[int, ...], dtype: str) -> Any:
        return np.empty(shape, dtype=dtype)

    def alloc_storage(self, nbytes: int) -> Any:
        """A block of `nbytes` bytes (page aligned) that planned tensors are views of.

        A private anonymous mapping: blocks are sized for the largest shapes the build allows, and
        only the pages a call's shapes reach ever take memory."""
        raw = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return np.frombuffer(raw, dtype=np.uint8)[:nbytes]

    def view(self, storage: Any, offset: int, shape: tuple[int, ...], dtype: str) -> Any:
        """A tensor of `shape` and `dtype` at byte `offset` of `storage`: no copy, no allocation."""
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if offset + nbytes > storage.nbytes:
            raise VMError(
                f"a {dtype} tensor of shape {shape} does not fit its planned storage of {storage.nbytes} "
                "bytes: the call's sizes exceed the bounds the program was built for (its context window)"
            )
        return storage[offset : offset + nbytes].view(dtype).reshape(shape)

    def reshape(self, value: Any, shape: tuple[int, ...]) -> Any:
        """The same elements, row-major, with another shape: a view of the same memory."""
        out = value.view()
        out.shape = shape  # raises rather than copy when the memory is not contiguous
        return out

    def from_host(self, array: Any, persistent: bool = False) -> Any:
        """`array` where this device's kernels read it (`persistent`: weights and constants, kept)."""
        return array

    def to_host(self, value: Any) -> Any:
        """Host (numpy) copies of the device tensors in `value`, a tensor or a tuple."""
        return value

    def adapt_extern(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """The device's version of a library function (on the CPU, the function itself)."""
        return fn


def _matcher(info: dict, what: str) -> Callable[[Any, Env], None]:
    """Check a runtime value against serialized struct info, binding new symbolic vars."""
    kind = info["kind"]
    if kind == "object":
        return lambda value, env: None
    if kind == "tuple":
        fields = [_matcher(f, f"{what}[{i}]") for i, f in enumerate(info["fields"])]

        def match_tuple(value: Any, env: Env) -> None:
            if not isinstance(value, (tuple, list)) or len(value) != len(fields):
                raise MatchError(f"{what}: expected a tuple of {len(fields)}, got {type(value).__name__}")
            for m, v in zip(fields, value):
                m(v, env)

        return match_tuple
    if kind == "prim":
        expr = info.get("value")
        if expr is None:
            return lambda value, env: None
        return _dims_matcher([expr], what, lambda v: (int(v),), "value")
    dims = info.get("shape") if kind == "tensor" else info.get("values")
    ndim, dtype = info.get("ndim", -1), info.get("dtype")

    def shape_of(value: Any) -> tuple[int, ...]:
        if kind == "shape":
            return tuple(int(v) for v in value)
        if dtype is not None and str(value.dtype) != dtype:
            raise MatchError(f"{what}: expected dtype {dtype}, got {value.dtype}")
        return tuple(value.shape)

    if dims is None:

        def match_ndim(value: Any, env: Env) -> None:
            s = shape_of(value)
            if ndim != -1 and len(s) != ndim:
                raise MatchError(f"{what}: expected rank {ndim}, got shape {s}")

        return match_ndim
    return _dims_matcher(dims, what, shape_of, "shape")


def _dims_matcher(dims: Sequence[str | int], what: str, shape_of, noun: str) -> Callable[[Any, Env], None]:
    evaluators = [compile_expr(d) for d in dims]
    bare = [d if isinstance(d, str) and d.isidentifier() else None for d in dims]
    expected = "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"

    def match(value: Any, env: Env) -> None:
        actual = shape_of(value)
        if len(actual) != len(dims):
            raise MatchError(f"{what}: expected {noun} {expected}, got {actual}")
        # First bind the bare variables that are new, then check every dim.
        for name, a in zip(bare, actual):
            if name is not None and name not in env:
                env[name] = a
        for i, (d, ev, a) in enumerate(zip(dims, evaluators, actual)):
            want = ev(env)
            if want != a:
                detail = f"{d} is {want} here" if isinstance(d, str) else f"dim {i} must be {want}"
                raise MatchError(f"{what}: expected {noun} {expected}, got {actual} ({detail})")

    return match


@contextlib.contextmanager
def no_gc():
    """The cyclic garbage collector paused: loading builds ~10^5 objects (a program, closures),
    none of them garbage, and collections triggered on the way cost 2-4x the work itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def fast_step_default() -> bool:
    """The low-overhead step is on unless LLMD_FAST_STEP=0 (see the module docstring)."""
    return os.environ.get("LLMD_FAST_STEP", "1").strip().lower() not in ("0", "false", "no", "off")


def check_static(value: Any, info: Mapping[str, Any], what: str) -> None:
    """The check of a parameter of fully known shape, without a matcher kept per parameter (a
    model has hundreds): quick when it passes, the matcher's message when it does not."""
    shape = getattr(value, "shape", None)
    if shape is not None and tuple(shape) == tuple(info["shape"]) and str(value.dtype) == info["dtype"]:
        return
    _matcher(info, what)(value, {})


def _static_params(func: Mapping[str, Any]) -> tuple[int, ...]:
    """Parameters whose check depends on nothing but the object: tensors of fully known shape."""
    return tuple(
        i
        for i, info in enumerate(func["param_infos"])
        if info["kind"] == "tensor"
        and info.get("dtype") is not None
        and info.get("shape") is not None
        and all(isinstance(d, int) for d in info["shape"])
    )


class VirtualMachine:
    """Runs the functions of a program on a device with the given kernels and externs."""

    def __init__(
        self,
        program: Mapping[str, Any],
        kernels: Mapping[str, Callable[..., Any]],
        externs: Mapping[str, Callable[..., Any]] | None = None,
        constants: Mapping[str, Any] | None = None,
        device: Device | None = None,
        fast_step: bool | None = None,
    ):
        self.program = program
        self.fast_step = fast_step_default() if fast_step is None else bool(fast_step)
        self.kernels = kernels
        self.device = device or Device()
        self.externs = {k: self.device.adapt_extern(k, fn) for k, fn in (externs or {}).items()}
        self.constants = {k: self.device.from_host(v, persistent=True) for k, v in (constants or {}).items()}
        # allocs / alloc_bytes count what the device allocated, planned storage blocks included.
        self.stats = {"kernel_calls": 0, "allocs": 0, "alloc_bytes": 0}
        self._storage: dict[str, Any] = {}  # planned blocks, allocated at first use, then reused
        # Views of planned blocks, kept (CPU only: a GPU device's view may take a pooled buffer).
        self._views: dict[tuple, Any] | None = (
            {} if self.fast_step and type(self.device).view is Device.view else None
        )
        self.plan_status: dict[str, str] = {}  # function -> "planned" or why it is not
        with no_gc():
            self._functions = {
                name: self._compile_function(name, f) for name, f in program["functions"].items()
            }

    def __getitem__(self, name: str) -> Callable[..., Any]:
        try:
            return self._functions[name]
        except KeyError:
            raise VMError(
                f"the program has no function {name!r}; it has {', '.join(self._functions)}"
            ) from None

    def run(self, name: str, *args: Any) -> Any:
        return self[name](*args)

    # -- what instructions and plans share
    def storage_block(self, key: str, nbytes: int) -> Any:
        """The planned block `key`: allocated at first use, then the same block at every call."""
        block = self._storage.get(key)
        if block is None:
            block = self._storage[key] = self.device.alloc_storage(nbytes)
            self.stats["allocs"] += 1
            self.stats["alloc_bytes"] += nbytes
        return block

    def view(self, storage: Any, offset: int, shape: tuple[int, ...], dtype: str) -> Any:
        if self._views is None:
            return self.device.view(storage, offset, shape, dtype)
        key = (id(storage), offset, shape, dtype)  # planned blocks live as long as the VM
        v = self._views.get(key)
        if v is None:
            v = self._views[key] = self.device.view(storage, offset, shape, dtype)
        return v

    def extern(self, name: str, fname: str) -> Callable[..., Any]:
        try:
            return self.externs[name]
        except KeyError:
            raise VMError(f"{fname}: extern function {name!r} is not registered") from None

    # -- compilation of instructions into closures
    def _compile_function(self, name: str, func: Mapping[str, Any]) -> Callable[..., Any]:
        if not self.fast_step:
            self.plan_status[name] = "off"
            return self._compile_instructions(name, func)
        from llm_deploy.runtime.plan import NotPlannable, PlannedFunction

        try:  # the instruction path of a planned function is compiled if it is ever needed
            planned = PlannedFunction(self, name, func, lambda: self._compile_instructions(name, func))
        except NotPlannable as e:
            self.plan_status[name] = str(e)
            return self._compile_instructions(name, func)
        self.plan_status[name] = "planned"
        return planned

    def _compile_instructions(self, name: str, func: Mapping[str, Any]) -> Callable[..., Any]:
        params: list[str] = func["params"]
        infos = func["param_infos"]
        body = self._compile_block(func["instrs"], name)
        ret = func["ret"]
        # Under the fast step, parameters of static shape are checked only when they are other
        # objects than the ones checked last (their checks bind no symbolic variable).
        static = set(_static_params(func)) if self.fast_step else set()
        dynamic = [
            (i, _matcher(infos[i], f"{name}: parameter {params[i]}"))
            for i in range(len(params))
            if i not in static
        ]
        static_checks = [(i, infos[i], f"{name}: parameter {params[i]}") for i in sorted(static)]
        bound: list[Any] = []

        def call(*args: Any) -> Any:
            if len(args) != len(params):
                raise VMError(
                    f"{name} takes {len(params)} argument(s) ({', '.join(params)}), got {len(args)}"
                )
            regs: Regs = dict(zip(params, args))
            env: Env = {}
            if static_checks:
                statics = [args[i] for i, _, _ in static_checks]
                if len(bound) != len(statics) or not all(map(operator.is_, statics, bound)):
                    for (_, info, what), a in zip(static_checks, statics):
                        check_static(a, info, what)
                    bound[:] = statics
            for i, check in dynamic:
                check(args[i], env)
            for step in body:
                step(regs, env)
            return regs[ret]

        return call

    def _compile_block(self, instrs: Sequence[Mapping[str, Any]], fname: str) -> list[Step]:
        return [self._compile_instr(i, fname) for i in instrs]

    def _compile_instr(self, ins: Mapping[str, Any], fname: str) -> Step:
        op = ins["op"]
        builder = getattr(self, f"_op_{op}", None)
        if builder is None:
            raise VMError(f"{fname}: unknown instruction {op!r}")
        return builder(ins, fname)

    def _op_match(self, ins, fname) -> Step:
        src, dst = ins["src"], ins["dst"]
        check = _matcher(ins["info"], f"{fname}: match_cast {dst}")

        def step(regs: Regs, env: Env) -> None:
            check(regs[src], env)
            regs[dst] = regs[src]

        return step

    def _op_alloc(self, ins, fname) -> Step:
        dst, dtype = ins["dst"], ins["dtype"]
        dims = [compile_expr(d) for d in ins["shape"]]
        alloc = self.device.alloc
        stats, itemsize = self.stats, np.dtype(dtype).itemsize

        def step(regs: Regs, env: Env) -> None:
            shape = tuple(d(env) for d in dims)
            regs[dst] = alloc(shape, dtype)
            stats["allocs"] += 1
            stats["alloc_bytes"] += int(np.prod(shape, dtype=np.int64)) * itemsize

        return step

    def _op_alloc_storage(self, ins, fname) -> Step:
        """A planned block, sized for the largest shapes the build allows: allocated once."""
        dst, nbytes, key = ins["dst"], int(ins["bytes"]), ins["key"]
        block = self.storage_block

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = block(key, nbytes)

        return step

    def _op_alloc_tensor(self, ins, fname) -> Step:
        dst, storage, offset, dtype = ins["dst"], ins["storage"], int(ins["offset"]), ins["dtype"]
        dims = [compile_expr(d) for d in ins["shape"]]
        view = self.view

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = view(regs[storage], offset, tuple(d(env) for d in dims), dtype)

        return step

    def _op_reshape(self, ins, fname) -> Step:
        dst, src = ins["dst"], ins["src"]
        dims = [compile_expr(d) for d in ins["shape"]]
        reshape = self.device.reshape

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = reshape(regs[src], tuple(d(env) for d in dims))

        return step

    def _op_call_tir(self, ins, fname) -> Step:
        name = ins["kernel"]
        if name not in self.kernels:
            raise VMError(f"{fname}: kernel {name!r} is not in the kernel library")
        kernel = self.kernels[name]
        args, outs = list(ins["args"]), list(ins["outs"])
        scalars: list[Evaluator] = [compile_expr(s) for s in ins.get("scalars", [])]
        stats = self.stats

        def step(regs: Regs, env: Env) -> None:
            kernel(*[regs[a] for a in args], *[regs[o] for o in outs], *[s(env) for s in scalars])
            stats["kernel_calls"] += 1

        return step

    def _op_call_extern(self, ins, fname) -> Step:
        name = ins["name"]
        args, outs = list(ins["args"]), list(ins["outs"])
        externs = self.externs

        def step(regs: Regs, env: Env) -> None:
            try:
                fn = externs[name]
            except KeyError:
                raise VMError(f"{fname}: extern function {name!r} is not registered") from None
            fn(*[regs[a] for a in args], *[regs[o] for o in outs])

        return step

    def _op_call_extern_value(self, ins, fname) -> Step:
        """dst = fn(*args): an extern that returns its result (not DPS), e.g. arrays it owns."""
        name, args, dst = ins["name"], list(ins["args"]), ins["dst"]
        externs = self.externs

        def step(regs: Regs, env: Env) -> None:
            try:
                fn = externs[name]
            except KeyError:
                raise VMError(f"{fname}: extern function {name!r} is not registered") from None
            regs[dst] = fn(*[regs[a] for a in args])

        return step

    def _op_call(self, ins, fname) -> Step:
        callee, args, dst = ins["func"], list(ins["args"]), ins["dst"]
        functions = self._functions

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = functions[callee](*[regs[a] for a in args])

        return step

    def _op_tuple(self, ins, fname) -> Step:
        dst, fields = ins["dst"], list(ins["fields"])

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = tuple(regs[f] for f in fields)

        return step

    def _op_get_item(self, ins, fname) -> Step:
        dst, src, index = ins["dst"], ins["src"], ins["index"]

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = regs[src][index]

        return step

    def _op_copy(self, ins, fname) -> Step:
        dst, src = ins["dst"], ins["src"]

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = regs[src]

        return step

    def _op_shape(self, ins, fname) -> Step:
        dst = ins["dst"]
        values = [compile_expr(v) for v in ins["values"]]

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = tuple(v(env) for v in values)

        return step

    def _op_prim(self, ins, fname) -> Step:
        dst, value = ins["dst"], compile_expr(ins["value"])

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = value(env)

        return step

    def _op_const(self, ins, fname) -> Step:
        dst, name = ins["dst"], ins["name"]
        if name not in self.constants:
            raise VMError(f"{fname}: constant {name!r} is missing from the artifact")
        value = self.constants[name]

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = value

        return step

    def _op_string(self, ins, fname) -> Step:
        dst, value = ins["dst"], ins["value"]

        def step(regs: Regs, env: Env) -> None:
            regs[dst] = value

        return step

    def _op_if(self, ins, fname) -> Step:
        cond, dst = ins["cond"], ins["dst"]
        then_body = self._compile_block(ins["then"], fname)
        else_body = self._compile_block(ins["else"], fname)
        then_ret, else_ret = ins["then_ret"], ins["else_ret"]

        def step(regs: Regs, env: Env) -> None:
            value = regs[cond]
            taken = (
                bool(np.asarray(value).reshape(-1)[0]) if not isinstance(value, (bool, int)) else bool(value)
            )
            body, ret = (then_body, then_ret) if taken else (else_body, else_ret)
            for s in body:
                s(regs, env)
            regs[dst] = regs[ret]

        return step

    def _op_free(self, ins, fname) -> Step:
        names = list(ins["regs"])

        def step(regs: Regs, env: Env) -> None:
            for n in names:
                regs.pop(n, None)

        return step
