"""A native loop that calls a list of kernels: one ctypes call runs a whole step's launches.

Calling a kernel from Python costs microseconds (argument checks, a ctypes call); a decode step
of the default model calls ~400 of them. The VM's fast step (runtime/plan.py) checks each launch
once, when it builds a plan, and then hands this loop a flat list of already checked launches:

    code: int64[]   per launch: fn, nbufs, nvars, ref_0 .. ref_{nbufs-1}, var_0 .. var_{nvars-1}
    ref >= 0        a data pointer, fixed for the plan (weights, planned storage, constants)
    ref < 0         slot -ref-1 of `objs`: the address of a numpy array object (a tensor that is
                    new at every call: the token ids, the KV cache's step arrays, the output); its
                    data pointer is read at `data_offset` inside the object, as abi.py's Python
                    entry points do.

Each call goes through the packed entry `fn(void **buffers, int64 *vars)` of abi.py, with `vars`
pointing into `code` itself.

On x86-64 the loop's machine code (`X86_64_CODE`: `_IR` compiled for the baseline x86-64 CPU,
position independent, no relocations; a test recompiles it and compares) is copied into an
executable page: no LLVM code generation at run time, which would cost ~15 ms and ~16 MB of
LLVM's own pages. Elsewhere `_IR` is compiled with llvmlite on first use.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import sys

SYMBOL = "llmd_run_launches"

# void llmd_run_launches(const int64 *code, int64 n, const int64 *objs, int64 data_offset, void **bufs)
_IR = """
define void @llmd_run_launches(ptr %code, i64 %n, ptr %objs, i64 %off, ptr %bufs) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i.next, %call]
  %p = phi i64 [0, %entry], [%p.next, %call]
  %done = icmp eq i64 %i, %n
  br i1 %done, label %exit, label %head
head:
  %fn.a = getelementptr i64, ptr %code, i64 %p
  %fn.i = load i64, ptr %fn.a
  %fn = inttoptr i64 %fn.i to ptr
  %nb.a = getelementptr i64, ptr %fn.a, i64 1
  %nb = load i64, ptr %nb.a
  %nv.a = getelementptr i64, ptr %fn.a, i64 2
  %nv = load i64, ptr %nv.a
  %refs = getelementptr i64, ptr %fn.a, i64 3
  br label %bufs.loop
bufs.loop:
  %j = phi i64 [0, %head], [%j.next, %store]
  %bdone = icmp eq i64 %j, %nb
  br i1 %bdone, label %call, label %ref
ref:
  %r.a = getelementptr i64, ptr %refs, i64 %j
  %r = load i64, ptr %r.a
  %dyn = icmp slt i64 %r, 0
  br i1 %dyn, label %deref, label %store
deref:
  %k = sub i64 -1, %r
  %o.a = getelementptr i64, ptr %objs, i64 %k
  %o = load i64, ptr %o.a
  %d.i = add i64 %o, %off
  %d.a = inttoptr i64 %d.i to ptr
  %d = load i64, ptr %d.a
  br label %store
store:
  %v = phi i64 [%d, %deref], [%r, %ref]
  %b.a = getelementptr i64, ptr %bufs, i64 %j
  store i64 %v, ptr %b.a
  %j.next = add i64 %j, 1
  br label %bufs.loop
call:
  %vars = getelementptr i64, ptr %refs, i64 %nb
  call void %fn(ptr %bufs, ptr %vars)
  %after = add i64 %p, 3
  %after2 = add i64 %after, %nb
  %p.next = add i64 %after2, %nv
  %i.next = add i64 %i, 1
  br label %loop
exit:
  ret void
}
"""

# `_IR` for x86_64-unknown-linux-gnu, cpu x86-64, opt 3, PIC: the .text of the object file.
X86_64_CODE = bytes.fromhex(
    "554157415641554154534883ec184c89c34989ce4989d7488934244989fd31c04531e4eb2b66662e0f1f840000000000"
    "488d34e94889dfffd04901ec488b4424084901c44983c403488b44241048ffc0483b0424744c48894424104b8b44e500"
    "4b8b6ce5084b8b4ce51048894c24084a8d0ce5180000004c01e931d2eb096690488934d348ffc24839d574a4488b34d1"
    "4885f679eb48f7d6498b34f74a8b3436ebde4883c4185b415c415d415e415f5dc3"
)

RUN = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p
)


def _executable_copy(code: bytes) -> int:
    """The address of `code` copied into a fresh page that is then made read-only and executable."""
    from llm_deploy.targets.llvm import elf

    libc = elf.process_libc()
    size = -(-len(code) // mmap.PAGESIZE) * mmap.PAGESIZE
    address = libc.mmap(
        None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0
    )
    if address in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap of the launch loop failed")
    ctypes.memmove(address, code, len(code))
    if libc.mprotect(address, size, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
        raise OSError(ctypes.get_errno(), "mprotect of the launch loop failed")
    return address  # never unmapped: one page per process


def _jit() -> tuple[object, int]:
    import llvmlite.binding as llvm

    from llm_deploy.targets.llvm.host import host, init_llvm, target_machine

    init_llvm()
    here = host()
    mod = llvm.parse_assembly(_IR)
    mod.triple = here.triple
    mod.verify()
    engine = llvm.create_mcjit_compiler(mod, target_machine(here))
    engine.finalize_object()
    return engine, engine.get_function_address(SYMBOL)


@functools.cache
def _loop() -> tuple[object, ctypes._CFuncPtr]:
    """The loop for this process (and what keeps its code alive)."""
    if platform.machine() in ("x86_64", "AMD64") and sys.platform.startswith("linux"):
        return None, RUN(_executable_copy(X86_64_CODE))
    engine, address = _jit()
    return engine, RUN(address)


def run_launches() -> ctypes._CFuncPtr:
    """`run(code_address, n_launches, objs_address, data_offset, bufs_address)` (see module doc)."""
    return _loop()[1]
