"""Bind the model's KV-cache ops to a cache implementation.

`kv_cache_positions` and `kv_cache_attention` become destination-passing library calls of the
runtime's cache (`kv_cache.positions`, `kv_cache.attention`), which read and write K/V through
the page table. The model definition does not change; another pass may instead lower the same
ops to attention tensor programs.
"""

from __future__ import annotations

from llm_deploy.compiler.expr import Call, Function, Op, PrimValue, VarBinding
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops import builtin

EXTERN_NAMES = {"kv_cache_positions": "kv_cache.positions", "kv_cache_attention": "kv_cache.attention"}


class _BindCache(ExprMutator):
    def visit_binding(self, binding):
        value = binding.value
        if isinstance(binding, VarBinding) and isinstance(value, Call) and isinstance(value.op, Op):
            name = value.op.name
            if name in EXTERN_NAMES:
                args = list(value.args)
                if name == "kv_cache_attention":
                    args.append(PrimValue(value.attrs["layer"]))
                call = builtin.call_extern(EXTERN_NAMES[name], args, binding.var.info, pure=True)
                return [VarBinding(binding.var, call)]
        return super().visit_binding(binding)


def bind_kv_cache(mod: IRModule) -> IRModule:
    """Rewrite every KV-cache op of every graph function into a call of the runtime cache."""
    out = mod
    for name, func in mod.items():
        if isinstance(func, Function):
            new = _BindCache().visit_function(func)
            if new is not func:
                out = out.with_function(name, new)
    return out
