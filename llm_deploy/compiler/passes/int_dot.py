"""int_dot: decode's products with GGUF Q4_0/Q4_1/Q8_0 weights take int8-quantized activations.

    lv = dequantize_linear(h, d, m, qs, packing="ggml:Q4_1", shape=(576, 576))
becomes, in the functions named (by default `decode`),
    lv = int_dot_linear(h, d, m, qs, packing="ggml:Q4_1", shape=(576, 576))

A decode step reads every weight once for one token: it is bound by how fast the weights stream,
and a float dequantize-then-multiply cannot keep up with the memory (FACTS.md: 4-5 GB/s of packed
weights). Integer block products (llama.cpp's method) can. The activations lose precision (8 bits
per value, one scale per 32), so the pass is a choice of the CPU pipeline, recorded in the
module attribute `int_dot` (False turns it off), and judged by perplexity, not by exact tokens.
Prefill and scoring keep the exact kernels: they are compute bound and already fast.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_deploy.compiler.expr import Call, Function, Op, info_of
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops.quantized import int_dot_linear
from llm_deploy.compiler.struct_info import TensorInfo
from llm_deploy.quantization.int_dot import INT_DOT_TYPES

DEFAULT_FUNCTIONS = ("decode",)


def use_int_dot(mod: IRModule, functions: Sequence[str] = DEFAULT_FUNCTIONS) -> IRModule:
    """Rewrite the float32 `dequantize_linear` calls on Q4_0/Q4_1/Q8_0 blocks in `functions`."""
    if not mod.attrs.get("int_dot", True):
        return mod
    funcs = dict(mod.items())
    changed = False
    for name in functions:
        f = funcs.get(name)
        if isinstance(f, Function):
            new = _Rewrite().visit_function(f)
            if new is not f:
                funcs[name], changed = new, True
    return IRModule(funcs, dict(mod.attrs.items())) if changed else mod


def int_dot(mod: IRModule) -> IRModule:
    """The pipeline's pass: `use_int_dot` on the default functions."""
    return use_int_dot(mod)


class _Rewrite(ExprMutator):
    def visit_expr(self, expr):
        if (
            isinstance(expr, Call)
            and isinstance(expr.op, Op)
            and expr.op.name == "dequantize_linear"
            and _integer_kernel(expr)
        ):
            x, *arrays = (self.visit_expr(a) for a in expr.args)
            return int_dot_linear(x, arrays, expr.attrs["packing"], expr.attrs["shape"])
        return super().visit_expr(expr)


def _integer_kernel(call: Call) -> bool:
    kind, _, ggml_type = str(call.attrs["packing"]).partition(":")
    x = info_of(call.args[0])
    return (
        kind == "ggml" and ggml_type in INT_DOT_TYPES and isinstance(x, TensorInfo) and x.dtype == "float32"
    )
