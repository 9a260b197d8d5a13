"""The fused dequantize ops lowered for the GPU: the same math as ops/lower_quantized.py, as plain
loops that the GPU rules schedule.

The CPU lowerings come scheduled by hand (tasks over rows of W, vectorized lanes, a row block of
W dequantized into a stack buffer): structure a GPU cannot use. Here each op is what it means,
and every packing contributes only its element (`dequant_of`: the float32 value of W[j, k]):

    dequantize_linear:  Out[i, j] = sum_k X[i, k] * W[j, k]    -> the matrix-product rule: one
                        workgroup per output for decode, register tiles for prefill, each thread
                        dequantizing the weights it reads (W never exists dequantized)
    dequantize_take:    Out[i, k] = W[ids[i], k]                -> the elementwise rule

    mod = lower_quantized(mod)      # before legalize, in the webgpu pipeline
"""

from __future__ import annotations

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops import builtin
from llm_deploy.compiler.ops.lower_common import known
from llm_deploy.compiler.ops.lower_quantized import dequant_of
from llm_deploy.compiler.ops.quantized import packed_specs
from llm_deploy.compiler.passes.legalize import ModuleFuncs, rewrite_calls
from llm_deploy.compiler.shape import SymVar
from llm_deploy.compiler.struct_info import StructInfo
from llm_deploy.quantization.formats import packing_from_key

F32 = "float32"


def lower_quantized(mod: IRModule) -> IRModule:
    """Lower every dequantize_linear / dequantize_take call to a plain (unscheduled) kernel."""

    def choose(call: Call, infos: list[StructInfo], out_info: StructInfo, funcs: ModuleFuncs) -> Expr | None:
        lower = LOWERINGS.get(call.op.name)  # type: ignore[attr-defined]
        if lower is None:
            return None
        found = lower(call, infos, out_info)
        if found is None:
            return None
        func, name = found
        return builtin.call_tir(funcs.add_prim_func(func, name), tuple(call.args), out_info)

    return rewrite_calls(mod, choose)


def _weight(call: Call):
    """(k, the packed buffers, W[j, k] as a value) of the call's packing."""
    packing = packing_from_key(call.attrs["packing"])
    _, k = (int(d) for d in call.attrs["shape"])
    bufs = {s.suffix: T.Buffer(s.suffix, s.shape, s.dtype) for s in packed_specs(call)}
    lanes, value = dequant_of(packing)
    if k % lanes:
        return None
    tag = packing.key.replace(":", "_").replace("float16", "f16").replace("float32", "f32").lower()

    def element(j, kk):
        return value(bufs, j, S.floordiv(kk, lanes), S.floormod(kk, lanes))

    return k, list(bufs.values()), element, tag


def _rows(info: StructInfo) -> S.PrimExpr | None:
    t = known(info)
    if t is None or t.ndim not in (1, 2) or not isinstance(t.shape[0], (S.IntImm, SymVar)):
        return None
    return t.shape[0]


def _linear(call: Call, infos: list[StructInfo], out_info: StructInfo) -> tuple[T.PrimFunc, str] | None:
    rows, out = _rows(infos[0]), known(out_info)
    if rows is None or out is None or known(infos[0]).dtype != F32 or out.dtype != F32:  # type: ignore[union-attr]
        return None
    found = _weight(call)
    if found is None:
        return None
    k, packed, element, tag = found
    n_out = int(call.attrs["shape"][0])
    X, Out = T.Buffer("X", (rows, k), F32), T.Buffer("Out", (rows, n_out), F32)
    acc = T.Buffer("acc", (1,), F32, "local")
    i, j, kk = S.var("i"), S.var("j"), S.var("k")
    zero = (S.const(0),)
    body = T.Allocate(
        acc,
        T.seq(
            T.Store(acc, zero, T.Imm(0.0, F32)),
            T.For(kk, k, T.Store(acc, zero, acc[0] + X[i, kk] * element(j, kk))),
            T.Store(Out, (i, j), acc[0]),
        ),
    )
    return T.PrimFunc((X, *packed, Out), T.For(i, rows, T.For(j, n_out, body))), f"dequantize_linear_{tag}"


def _take(call: Call, infos: list[StructInfo], out_info: StructInfo) -> tuple[T.PrimFunc, str] | None:
    ids_info = known(infos[0])
    n = _rows(infos[0])
    if n is None or ids_info is None or ids_info.ndim != 1:
        return None
    found = _weight(call)
    if found is None:
        return None
    k, packed, element, tag = found
    ids, Out = T.Buffer("ids", (n,), ids_info.dtype), T.Buffer("Out", (n, k), F32)
    i, kk, row = S.var("i"), S.var("k"), S.var("row")
    body = T.Let(row, T.cast("int64", ids[i]), T.Store(Out, (i, kk), element(row, kk)))
    return T.PrimFunc((ids, *packed, Out), T.For(i, n, T.For(kk, k, body))), f"dequantize_take_{tag}"


LOWERINGS = {"dequantize_linear": _linear, "dequantize_take": _take}
