"""The machine code is built for: triple, CPU name and features, and the LLVM target machine.

Code built for one CPU may use instructions another lacks (AVX2, F16C, FMA...). Running it there
dies with SIGILL, so a loader first compares the features recorded at build time with the host's
(`check_host_compatible`) and refuses with a message instead. Nothing here imports the compiler:
the runtime loads artifacts with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import llvmlite.binding as llvm


@dataclass(frozen=True)
class Arch:
    """What the thread pool needs per architecture: syscall numbers and a spin-wait hint."""

    sys_futex: int
    sys_gettid: int
    pause: str  # IR call of the CPU's spin-wait hint, or "" where there is none


ARCHS = {
    "x86_64": Arch(sys_futex=202, sys_gettid=186, pause="call void @llvm.x86.sse2.pause()"),
    "aarch64": Arch(sys_futex=98, sys_gettid=178, pause="call void @llvm.aarch64.hint(i32 1)"),
}


class HostMismatchError(RuntimeError):
    """Compiled code cannot run on this machine (other architecture or missing CPU features)."""


@functools.cache
def init_llvm() -> None:
    # llvmlite is imported where LLVM is used (~70 ms, ~40 MB): loading kernels needs it only
    # when the ELF loader (elf.py) cannot link them.
    import llvmlite.binding as llvm

    # llvm.initialize() raises in llvmlite >= 0.45; the native target is all we need.
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def arch_of(triple: str) -> Arch:
    name = triple.split("-", 1)[0]
    if name not in ARCHS:
        raise HostMismatchError(
            f"the LLVM target supports {sorted(ARCHS)}; triple {triple!r} is not one of them"
        )
    return ARCHS[name]


@dataclass(frozen=True)
class HostTarget:
    triple: str
    cpu: str
    features: str  # LLVM feature string: "+avx2,+fma,-avx512f,..."

    @property
    def enabled_features(self) -> frozenset[str]:
        return enabled(self.features)


def enabled(features: str) -> frozenset[str]:
    return frozenset(f[1:] for f in features.split(",") if f.startswith("+"))


@functools.cache
def host() -> HostTarget:
    import llvmlite.binding as llvm

    init_llvm()
    return HostTarget(
        llvm.get_process_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    )


def check_host_compatible(triple: str, features: str | frozenset[str]) -> None:
    """Raise HostMismatchError unless code built for `triple` with `features` can run here."""
    here = host()
    if triple.split("-", 1)[0] != here.triple.split("-", 1)[0]:
        raise HostMismatchError(f"code was built for {triple}, but this host is {here.triple}")
    wanted = enabled(features) if isinstance(features, str) else frozenset(features)
    missing = sorted(wanted - here.enabled_features)
    if missing:
        raise HostMismatchError(
            f"code was built for a CPU with features this host ({here.cpu}) lacks: {', '.join(missing)}; "
            "rebuild for this host"
        )


def target_machine(target: HostTarget, opt_level: int = 3) -> llvm.TargetMachine:
    import llvmlite.binding as llvm

    init_llvm()
    # PIC so that calls into libc (pthread_create, syscall, expf) go through stubs and GOT
    # entries that the JIT linker fills in, wherever libc happens to be mapped.
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=opt_level, reloc="pic", codemodel="default"
    )
