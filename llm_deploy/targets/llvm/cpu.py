"""Whether this CPU runs code built for given LLVM features, from /proc/cpuinfo (no LLVM needed).

`KernelModule` asks here first: on x86-64 Linux the kernel lists the CPU's flags, and LLVM's
feature names map onto them (mostly the same words). Only a certain yes counts: any feature it
cannot place, any other system, and the caller asks LLVM (host.check_host_compatible), which
also words the error.
"""

from __future__ import annotations

import functools
import platform
import sys

# LLVM x86 feature name -> the Linux /proc/cpuinfo flag that shows it, where the words differ.
X86_FLAGS = {
    "64bit": "lm", "bmi": "bmi1", "crc32": "sse4_2", "lzcnt": "abm", "pclmul": "pclmulqdq",
    "prfchw": "3dnowprefetch", "rdrnd": "rdrand", "sahf": "lahf_lm", "sha": "sha_ni", "sse3": "pni",
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "cmpxchg16b": "cx16", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512vbmi2": "avx512_vbmi2",
    "avx512bitalg": "avx512_bitalg", "avxvnni": "avx_vnni", "x87": "fpu",
}  # fmt: skip
# Features LLVM reports that no code we generate uses and kernels may not list: shadow stacks
# (CET instructions appear only with -fcf-protection, which codegen never asks for).
UNUSED = frozenset({"shstk"})


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def surely_compatible(triple: str, features: str) -> bool:
    """True when this host certainly runs x86-64 code built with `features` ("+avx2,-avx512f,...")."""
    if (
        triple.split("-", 1)[0] != "x86_64"
        or platform.machine() != "x86_64"
        or not sys.platform.startswith("linux")
    ):
        return False
    flags = cpu_flags()
    if not flags:
        return False
    wanted = (f[1:] for f in features.split(",") if f.startswith("+"))
    return all(f in UNUSED or X86_FLAGS.get(f, f) in flags for f in wanted)
