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

from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import (
    Call,
    DataflowBlock,
    DataflowVar,
    Function,
    GetItem,
    GlobalVar,
    Op,
    SeqExpr,
    Var,
    VarBinding,
    info_of,
)
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops.builtin import call_tir
from llm_deploy.compiler.ops.lower_int_dot import int_dot_func, microkernel_type
from llm_deploy.compiler.ops.quantized import int_dot_linear
from llm_deploy.compiler.struct_info import TensorInfo, TupleInfo
from llm_deploy.compiler.tir import PrimFunc
from llm_deploy.quantization.int_dot import int_dot_type

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
    x = info_of(call.args[0])
    return (
        int_dot_type(call.attrs["packing"]) is not None and isinstance(x, TensorInfo) and x.dtype == "float32"
    )


def merge_int_dot(mod: IRModule) -> IRModule:
    """After legalization: the int8-dot kernels of one dataflow block that read the same x (q/k/v,
    gate/up) become one kernel with a tuple of outputs, so x is quantized once and one launch
    (one wake of the thread pool) covers all their rows.

        q = call_tir(int_dot_linear_q4_1, (h, q_d, q_m, q_qs), ...)
        k = call_tir(int_dot_linear_q4_1, (h, k_d, k_m, k_qs), ...)
    becomes
        qk = call_tir(int_dot_linear_q4_1_x2, (h, q_d, q_m, q_qs, k_d, k_m, k_qs), out=(q's, k's))
        q = qk[0]
        k = qk[1]
    """
    funcs = dict(mod.items())
    merged: dict[tuple, str] = {}  # the members' kernels -> the merged kernel's name
    changed = False
    for name, f in list(funcs.items()):
        if isinstance(f, Function) and not f.attrs.get("primitive", False):
            blocks = [
                _merge_block(blk, funcs, merged) if isinstance(blk, DataflowBlock) else blk
                for blk in f.body.blocks
            ]
            if any(a is not b for a, b in zip(blocks, f.body.blocks)):
                funcs[name] = Function(f.params, SeqExpr(blocks, f.body.body), f.ret_info, f.pure, f.attrs)
                changed = True
    return IRModule(funcs, dict(mod.attrs.items())) if changed else mod


def _int_dot_call(b, funcs) -> tuple[str, str] | None:
    """(x's name, the kernel's type:K) of a one-weight int8-dot call_tir binding, else None."""
    if not isinstance(b, VarBinding) or not isinstance(b.value, Call) or b.value.op != Op("call_tir"):
        return None
    callee, args = b.value.args[0], b.value.args[1]
    f = funcs.get(callee.name) if isinstance(callee, GlobalVar) else None
    if not isinstance(f, PrimFunc) or "microkernel" not in f.attrs or len(b.value.args) != 2:
        return None
    x = args.fields[0]
    if not isinstance(x, Var) or len(f.buffers) != len(args.fields) + 1:
        return None  # already merged (several outputs), or x is not a var
    return x.name, f"{f.attrs['microkernel']}:{f.buffers[0].shape[1]}"


def _merge_block(block: DataflowBlock, funcs: dict, merged: dict) -> DataflowBlock:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, b in enumerate(block.bindings):
        key = _int_dot_call(b, funcs)
        if key is not None:
            groups.setdefault(key, []).append(i)
    groups = {k: v for k, v in groups.items() if len(v) > 1}
    if not groups:
        return block
    first = {members[0]: members for members in groups.values()}
    dropped = {i for members in groups.values() for i in members[1:]}
    out = []
    for i, b in enumerate(block.bindings):
        if i in dropped:
            continue
        if i not in first:
            out.append(b)
            continue
        members = [block.bindings[m] for m in first[i]]
        kernel = _merged_kernel([m.value.args[0].name for m in members], funcs, merged)
        x = members[0].value.args[1].fields[0]
        arrays = [a for m in members for a in m.value.args[1].fields[1:]]
        info = TupleInfo(tuple(m.var.info for m in members))
        tup = DataflowVar("_".join(m.var.name for m in members), info)
        out.append(VarBinding(tup, call_tir(GlobalVar(kernel), [x, *arrays], info)))
        out += [VarBinding(m.var, GetItem(tup, k)) for k, m in enumerate(members)]
    return DataflowBlock(tuple(out))


def _merged_kernel(kernels: list[str], funcs: dict, merged: dict) -> str:
    """The one kernel for these one-weight kernels (in this order), added to `funcs` once."""
    key = tuple(kernels)
    if key not in merged:
        parts, x, ggml_type = [], None, ""
        for p, k in enumerate(kernels):
            f = funcs[k]
            x = x or f.buffers[0]
            ggml_type = microkernel_type(f) or ""
            bufs = {b.name: T.Buffer(f"{b.name}_{p}", b.shape, b.dtype) for b in f.buffers[1:-1]}
            out = f.buffers[-1]
            parts.append((bufs, T.Buffer(f"Out_{p}", out.shape, out.dtype)))
        name = f"{kernels[0]}_x{len(kernels)}"
        while name in funcs:
            name += "_"
        funcs[name] = int_dot_func(x, parts, ggml_type)
        merged[key] = name
    return merged[key]
