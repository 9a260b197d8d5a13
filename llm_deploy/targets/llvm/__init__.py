"""The CPU target: tir -> LLVM IR (llvmlite) -> host-optimized object code, loaded without a linker.

Compiler side: `llm_deploy.targets.llvm.codegen.codegen(prim_funcs, LLVMOptions())`.
Runtime side (re-exported here, compiler-free): `KernelModule`, `Kernel`, `load`,
`check_host_compatible`.
"""

from llm_deploy.targets.llvm.host import HostMismatchError, check_host_compatible
from llm_deploy.targets.llvm.runtime import Kernel, KernelCallError, KernelModule, load

__all__ = ["HostMismatchError", "Kernel", "KernelCallError", "KernelModule", "check_host_compatible", "load"]
