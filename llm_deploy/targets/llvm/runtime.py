"""Loading compiled kernels (an object file, no linker) and calling them from Python.

A `KernelModule` owns one loaded object file: the kernels and the thread pool compiled into it,
linked in this process by elf.py (x86-64 Linux, no LLVM) or else by an MCJIT engine (llvmlite;
LLMD_ELF_LOADER=0 forces it). Loading checks first that the host can run the code (architecture
and CPU features: cpu.py reads /proc/cpuinfo, LLVM answers what it cannot), so a mismatched
artifact is an error message, not SIGILL. Before the code the pool's workers are running is
freed, the workers are stopped and joined.

Imports nothing from the compiler: artifacts load with `llm_deploy.runtime` and `llm_deploy.targets`.
"""

from __future__ import annotations

import ctypes
import json
import operator
import os
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from llm_deploy.runtime.symbolic import compile_expr
from llm_deploy.targets.llvm import elf
from llm_deploy.targets.llvm import threadpool as pool
from llm_deploy.targets.llvm.abi import PY_DATA_OFFSET, KernelSignature
from llm_deploy.targets.llvm.cpu import surely_compatible
from llm_deploy.targets.llvm.host import HostTarget, check_host_compatible
from llm_deploy.targets.llvm.launcher import run_launches

FORMAT = "llm_deploy.llvm_kernels/1"
PACKED = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class KernelCallError(ValueError):
    """Arguments that do not match a kernel's signature."""


class Kernel:
    """A compiled kernel, callable as `kernel(*arrays_and_ints)` in its parameter order.

    Checks every argument (type, dtype, C-contiguity, each dim against the signature), binds the
    symbolic dims from the shapes, and calls the Python entry point (abi.py), which takes the
    arrays themselves. `call_packed` is the raw packed ABI for callers that hold pointer arrays;
    `bind` is the check alone, for callers (the VM's plans) that check once and then launch
    through the packed entry (`address`) from native code (`launcher`).
    """

    def __init__(self, signature: KernelSignature, address: int, py_address: int, module: KernelModule):
        self.signature = signature
        self.name = signature.name
        self.address = address
        self._module = module  # keeps the code alive as long as the kernel is
        self._fn = PACKED(address)
        nbufs, nvars = len(signature.buffers), len(signature.vars)
        self._py = ctypes.CFUNCTYPE(None, *([ctypes.py_object] * nbufs + [ctypes.c_int64] * nvars))(
            py_address
        )
        self._nargs = len(signature.params)
        self._nvars = nvars
        slots = {v: i for i, v in enumerate(signature.vars)}
        # Scalars bind first, then each buffer dim binds a var (first bare occurrence), equals a
        # constant, equals an already bound var, or is an expression checked at the end.
        self._scalars = tuple(
            (pi, slots[p.name]) for pi, p in enumerate(signature.params) if p.kind == "scalar"
        )
        bound = {p.name for p in signature.params if p.kind == "scalar"}
        buffers, checks = [], []
        for pi, p in enumerate(signature.params):
            if p.kind != "buffer":
                continue
            binds, fixed, same = [], [], []
            for di, d in enumerate(p.shape):
                if isinstance(d, int):
                    fixed.append((di, d))
                elif d in slots and d in bound:
                    same.append((di, slots[d]))
                elif d in slots:
                    bound.add(d)
                    binds.append((di, slots[d]))
                else:
                    checks.append((pi, di, compile_expr(d)))
            buffers.append((pi, np.dtype(p.dtype), len(p.shape), tuple(binds), tuple(fixed), tuple(same)))
        self._buffers = tuple(buffers)
        self._buffer_index = tuple(b[0] for b in buffers)
        self._checks = tuple(checks)

    def __repr__(self) -> str:
        return f"<Kernel {self.signature}>"

    def call_packed(self, buffers_address: int, vars_address: int) -> None:
        """Call with the addresses of a `void*[]` of data pointers and an `int64[]` of vars."""
        self._fn(buffers_address, vars_address)

    def __call__(self, *args: Any) -> None:
        values = self.bind(*args)
        self._py(*[args[pi] for pi in self._buffer_index], *values)

    def bind(self, *args: Any) -> list[int]:
        """Check the arguments against the signature; the values of `signature.vars` they bind."""
        if self._module.closed:
            raise KernelCallError(f"kernel {self.name}: its module was closed (the code is freed)")
        if len(args) != self._nargs:
            raise KernelCallError(f"kernel {self.signature} takes {self._nargs} arguments, got {len(args)}")
        values = [0] * self._nvars
        for pi, slot in self._scalars:
            try:
                values[slot] = operator.index(args[pi])
            except TypeError:
                raise KernelCallError(
                    f"kernel {self.signature}: scalar arguments must be ints, got {args}"
                ) from None
        for pi, dt, ndim, binds, fixed, same in self._buffers:
            a = args[pi]
            if type(a) is not np.ndarray or (a.dtype is not dt and a.dtype != dt) or a.ndim != ndim:
                raise self._bad_arg(pi, a)
            if not a.flags.c_contiguous:
                raise self._bad_arg(pi, a)
            shape = a.shape
            for di, slot in binds:
                values[slot] = shape[di]
            for di, v in fixed:
                if shape[di] != v:
                    raise self._bad_arg(pi, a)
            for di, slot in same:
                if shape[di] != values[slot]:
                    raise self._bad_arg(pi, a, values)
        if self._checks:
            env = dict(zip(self.signature.vars, values))
            for pi, di, evaluate in self._checks:
                if args[pi].shape[di] != evaluate(env):
                    raise self._bad_arg(pi, args[pi], values)
        return values

    @property
    def closed(self) -> bool:
        return self._module.closed

    @property
    def module(self) -> KernelModule:
        return self._module

    def launcher(self) -> tuple[Any, int]:
        """(run, data_offset) of the native launch loop (launcher.py) that can call this kernel."""
        return run_launches(), self._module.data_offset

    def buffer_params(self) -> tuple[int, ...]:
        """Indices of the buffer parameters, in the order of the packed entry's `buffers`."""
        return self._buffer_index

    def _bad_arg(self, i: int, arg: Any, values: list[int] | None = None) -> KernelCallError:
        p = self.signature.params[i]
        want = f"a C-contiguous {p.dtype} array of shape ({', '.join(map(str, p.shape))})"
        if isinstance(arg, np.ndarray):
            contiguity = "" if arg.flags.c_contiguous else "non-contiguous "
            found = f"a {contiguity}{arg.dtype} array of shape {arg.shape}"
        else:
            found = type(arg).__name__
        where = ""
        if values is not None:
            bound = ", ".join(f"{k}={v}" for k, v in zip(self.signature.vars, values))
            where = f" with {bound} bound by earlier arguments"
        return KernelCallError(
            f"kernel {self.signature}: argument {i} ({p.name}) must be {want}{where}, found {found}"
        )


def _numpy_data_offset() -> int:
    """Where a numpy array object keeps its data pointer (16 on CPython: after the object header)."""
    probe = np.arange(3, dtype=np.int64)
    want = probe.ctypes.data
    for offset in range(8, 128, 8):
        if ctypes.c_void_p.from_address(id(probe) + offset).value == want:
            return offset
    raise RuntimeError(
        "cannot locate the data pointer inside numpy arrays; this Python/numpy is not supported"
    )


class _MCJITImage:
    """An object file linked by LLVM's MCJIT (where elf.py cannot link it)."""

    def __init__(self, object_code: bytes):
        import llvmlite.binding as llvm

        from llm_deploy.targets.llvm.host import host, target_machine

        here = host()
        empty = llvm.parse_assembly("")
        empty.triple = here.triple
        self.engine = llvm.create_mcjit_compiler(empty, target_machine(here))
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(object_code))
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        return self.engine.get_function_address(name) or self.engine.get_global_value_address(name)

    def close(self) -> None:
        self.engine.close()


def link(object_code: bytes) -> elf.LoadedObject | _MCJITImage:
    """The object file's code in this process: by elf.py where it can, else by MCJIT."""
    if os.environ.get("LLMD_ELF_LOADER", "1") != "0":
        try:
            return elf.LoadedObject(object_code)
        except elf.ElfUnsupported:
            pass
    return _MCJITImage(object_code)


def _shutdown(image: Any, shutdown: Any, pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child: the workers (and the code's owner) live in the parent
    shutdown()  # join the pool's workers before their code is freed
    image.close()


class KernelModule:
    """Kernels of one object file, loaded into this process. `module[name]` is a `Kernel`."""

    def __init__(
        self,
        object_code: bytes,
        signatures: Mapping[str, KernelSignature],
        target: HostTarget,
        num_threads: int | None = None,
        spin: int = pool.DEFAULT_SPIN,
    ):
        if not surely_compatible(target.triple, target.features):
            check_host_compatible(target.triple, target.features)  # LLVM's answer, or the error
        self.closed = False
        self.object_code = object_code
        self.signatures = dict(signatures)
        self.target = target
        self.ir: str | None = None  # LLVM IR before optimization, when built in this process
        self.optimized_ir: str | None = None
        self.notes: list[str] = []
        self._image = link(object_code)
        self._configure = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32)(
            self._address(pool.CONFIGURE)
        )
        self._stat = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int32, ctypes.c_int32)(
            self._address(pool.STAT)
        )
        shutdown = ctypes.CFUNCTYPE(None)(self._address(pool.SHUTDOWN))
        self._forget = ctypes.CFUNCTYPE(None)(self._address(pool.FORGET))
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, _shutdown, self._image, shutdown, self._pid)
        self.set_num_threads(num_threads, spin)
        offset = self._image.address(PY_DATA_OFFSET)
        self.data_offset = _numpy_data_offset()
        ctypes.c_int64.from_address(offset).value = self.data_offset
        self.kernels = {
            name: Kernel(sig, self._address(sig.symbol), self._address(sig.py_symbol), self)
            for name, sig in self.signatures.items()
        }

    @property
    def linker(self) -> str:
        """Which linker loaded the code: "elf" (elf.py) or "mcjit"."""
        return "elf" if isinstance(self._image, elf.LoadedObject) else "mcjit"

    def _address(self, symbol: str) -> int:
        address = self._image.address(symbol)
        if not address:
            raise KeyError(f"symbol {symbol} is missing from the object file")
        return address

    def __getitem__(self, name: str) -> Kernel:
        if name not in self.kernels:
            raise KeyError(f"no kernel {name!r}; this module has {', '.join(sorted(self.kernels))}")
        return self.kernels[name]

    def __contains__(self, name: object) -> bool:
        return name in self.kernels

    def set_num_threads(
        self, num_threads: int | None = None, spin: int = pool.DEFAULT_SPIN, tasks_per_thread: int = 1
    ) -> None:
        """Threads for parallel loops (the caller's included); the workers restart on next use.
        Not while a kernel of this module runs."""
        if os.getpid() != self._pid:  # forked since: this copy of the pool has no threads
            self._forget()
            self._pid = os.getpid()
        self.num_threads = max(1, min(num_threads or os.cpu_count() or 1, pool.MAX_THREADS))
        self._configure(self.num_threads, spin, tasks_per_thread)

    def pool_stats(self) -> dict[str, Any]:
        """Running workers, their OS thread ids, and how many tasks each thread slot ran."""
        workers = self._stat(0, 0)
        return {
            "workers": workers,
            "tids": [self._stat(1, s) for s in range(1, workers + 1)],
            "tasks": [self._stat(2, s) for s in range(workers + 1)],
        }

    def close(self) -> None:
        """Stop the pool and free the code; calling a kernel of the module afterwards is an error."""
        self.closed = True
        self._finalizer()

    # --- persistence --------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "triple": self.target.triple,
            "cpu": self.target.cpu,
            "features": self.target.features,
            "kernels": [s.to_json() for s in self.signatures.values()],
        }

    def save(self, folder: str | Path, stem: str = "kernels") -> None:
        """Write `<stem>.o` (the object file) and `<stem>.json` (signatures and target)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.o").write_bytes(self.object_code)
        (folder / f"{stem}.json").write_text(json.dumps(self.manifest(), indent=1))

    @staticmethod
    def from_manifest(
        object_code: bytes, manifest: Mapping[str, Any], num_threads: int | None = None
    ) -> KernelModule:
        if manifest.get("format") != FORMAT:
            raise ValueError(
                f"not an LLVM kernel manifest: format {manifest.get('format')!r}, expected {FORMAT!r}"
            )
        target = HostTarget(manifest["triple"], manifest["cpu"], manifest["features"])
        sigs = [KernelSignature.from_json(k) for k in manifest["kernels"]]
        return KernelModule(object_code, {s.name: s for s in sigs}, target, num_threads)


def load(folder: str | Path, stem: str = "kernels", num_threads: int | None = None) -> KernelModule:
    """Load kernels saved with `KernelModule.save`, without compiling anything."""
    folder = Path(folder)
    manifest = json.loads((folder / f"{stem}.json").read_text())
    return KernelModule.from_manifest((folder / f"{stem}.o").read_bytes(), manifest, num_threads)
