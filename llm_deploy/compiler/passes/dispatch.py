"""Dispatch: choose, per op call and target, between a library call and a tensor program.

    rules = [Rule("matmul", extern="numpy.matmul", when=lambda call, infos, out: out.dtype == "float32"),
             Rule("softmax", extern=None)]      # None: lower it to a tensor program
    mod = dispatch(mod, rules, target="llvm")

The first rule that matches a call (op name, target, and `when`) decides. An extern call passes
the op's tensor operands, `call_extern("name", (a, b), out_info)`, so a rule must only send
calls whose attributes the library function implements (that is what `when` is for). Calls
that no rule matches are left as they are, for legalize or a later dispatch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.externs import get_extern
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops import builtin
from llm_deploy.compiler.ops.registry import get_op
from llm_deploy.compiler.passes.legalize import ModuleFuncs, lower_call, rewrite_calls
from llm_deploy.compiler.struct_info import StructInfo, TensorInfo

When = Callable[[Call, list[StructInfo], StructInfo], bool]


@dataclass(frozen=True)
class Rule:
    """Send calls of `op` to `extern` (a registered extern's name), or, when it is None, to the
    op's tensor program. `target` None matches every target."""

    op: str
    extern: str | None = None
    target: str | None = None
    when: When | None = None

    def __post_init__(self) -> None:
        get_op(self.op)  # a typo in an op name fails here, not silently at run time
        if self.extern is not None:
            get_extern(self.extern)

    def matches(self, call: Call, infos: list[StructInfo], out_info: StructInfo, target: str | None) -> bool:
        if call.op.name != self.op:  # type: ignore[attr-defined]
            return False
        if self.target is not None and target is not None and self.target != target:
            return False
        return self.when is None or self.when(call, infos, out_info)


def dispatch(mod: IRModule, rules: Sequence[Rule], target: str | None = None) -> IRModule:
    def choose(call: Call, infos: list[StructInfo], out_info: StructInfo, funcs: ModuleFuncs) -> Expr | None:
        for rule in rules:
            if rule.matches(call, infos, out_info, target):
                if rule.extern is None:
                    return lower_call(call, infos, out_info, funcs)
                return extern_call(rule.extern, call, infos, out_info)
        return None

    return rewrite_calls(mod, choose)


def extern_call(name: str, call: Call, infos: list[StructInfo], out_info: StructInfo) -> Expr:
    """`call_extern(name, tensor operands, out_info)`; pure externs may stay in dataflow blocks."""
    args = [a for a, i in zip(call.args, infos) if isinstance(i, TensorInfo)]
    return builtin.call_extern(name, args, out_info, pure=get_extern(name).pure)
