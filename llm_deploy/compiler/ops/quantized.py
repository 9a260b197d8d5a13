"""Ops that read packed weights: the fused dequantize-linear and dequantize-take.

    dequantize_linear(x (..., K), *arrays, packing=P, shape=(N, K)) -> (..., N)    x @ W^T
    dequantize_take(ids (...), *arrays, packing=P, shape=(N, K))    -> (..., K)    W[ids]
    int_dot_linear(x (..., K), *arrays, packing=ggml:T, shape=(N, K)) -> (..., N)
        x @ W^T with x quantized to int8 per block of 32 and integer block products, as llama.cpp
        computes it (T in Q4_0, Q4_1, Q8_0; numpy meaning: llm_deploy/quantization/int_dot.py)

`arrays` are the packed arrays of one (N, K) weight, in the order and with the shapes and dtypes
of `packing_from_key(P).arrays(shape)` (llm_deploy/quantization/formats.py). W never exists as a
tensor: the kernels (lower_quantized.py) dequantize as they read. Results are float32 (the
activations' dtype for linear).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.ops.common import tensor_args
from llm_deploy.compiler.ops.operands import info_str, shape_str
from llm_deploy.compiler.ops.registry import REQUIRED, InferContext, ShapeError, make_call, register_op
from llm_deploy.compiler.struct_info import StructInfo, TensorInfo
from llm_deploy.quantization.formats import ArraySpec, QuantizationError, packing_from_key

_ATTRS = {"packing": REQUIRED, "shape": REQUIRED}


def packed_specs(call: Call) -> tuple[ArraySpec, ...]:
    """The specs of the call's packed arrays, from its `packing` and `shape` attributes."""
    name = call.op.name  # type: ignore[attr-defined]
    shape = tuple(int(d) for d in call.attrs["shape"])
    try:
        packing = packing_from_key(call.attrs["packing"])
        packing.check(shape, f"{name}")
    except QuantizationError as e:
        raise ShapeError(f"{name}: {e}") from None
    return packing.arrays(shape)  # type: ignore[arg-type]


def _check_arrays(call: Call, arrays: Sequence[TensorInfo], ctx: InferContext) -> None:
    name = call.op.name  # type: ignore[attr-defined]
    specs = packed_specs(call)
    if len(arrays) != len(specs):
        raise ShapeError(
            f"{name} with packing {call.attrs['packing']} takes {len(specs)} packed arrays "
            f"({', '.join(s.suffix for s in specs)}), got {len(arrays)}"
        )
    for spec, info in zip(specs, arrays):
        bad_dtype = info.dtype is not None and info.dtype != spec.dtype
        bad_ndim = info.ndim not in (-1, len(spec.shape))
        bad_dims = (
            not bad_ndim
            and info.shape is not None
            and any(ctx.analyzer.can_prove_ne(d, S.const(e)) for d, e in zip(info.shape, spec.shape))
        )
        if bad_dtype or bad_ndim or bad_dims:
            raise ShapeError(
                f"{name}: packed array {spec.suffix!r} must be {shape_str(S.as_prim(spec.shape))} "
                f"{spec.dtype} for packing {call.attrs['packing']} of a {tuple(call.attrs['shape'])} "
                f"weight, got {info_str(info)}"
            )


@register_op("dequantize_linear", attrs=dict(_ATTRS))
def _infer_dequantize_linear(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """linear(x, W) with W read from its packed arrays: (..., K) -> (..., N)."""
    x, *arrays = tensor_args(call, infos)
    _check_arrays(call, arrays, ctx)
    n_out, k = (int(d) for d in call.attrs["shape"])
    if x.dtype is not None and x.dtype not in ("float32", "float16"):
        raise ShapeError(f"dequantize_linear: the input must be float32 or float16, got {info_str(x)}")
    if x.ndim == 0:
        raise ShapeError("dequantize_linear: the input must have rank >= 1")
    if x.shape is None:
        return TensorInfo(None, x.dtype, x.ndim)
    if ctx.analyzer.can_prove_ne(x.shape[-1], S.const(k)):
        raise ShapeError(
            f"dequantize_linear: input features differ: x {shape_str(x.shape)} has {x.shape[-1]}, "
            f"the weight [out, in] is {(n_out, k)}"
        )
    return TensorInfo((*x.shape[:-1], S.const(n_out)), x.dtype)


@register_op("int_dot_linear", attrs=dict(_ATTRS))
def _infer_int_dot_linear(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """dequantize_linear's shapes; only GGUF blocks with an integer kernel, float32 input."""
    from llm_deploy.quantization.int_dot import INT_DOT_TYPES, int_dot_type

    if int_dot_type(call.attrs["packing"]) is None:
        raise ShapeError(
            f"int_dot_linear: packing {call.attrs['packing']} has no integer kernel; "
            f"supported: {', '.join('ggml:' + t for t in INT_DOT_TYPES)}"
        )
    info = _infer_dequantize_linear(call, infos, ctx)
    if isinstance(info, TensorInfo) and info.dtype not in (None, "float32"):
        raise ShapeError(f"int_dot_linear: the input must be float32, got {info_str(infos[0])}")
    return info


@register_op("dequantize_take", attrs=dict(_ATTRS))
def _infer_dequantize_take(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """take(W, ids, axis=0) with W read from its packed arrays: (...) -> (..., K) float32."""
    ids, *arrays = tensor_args(call, infos)
    _check_arrays(call, arrays, ctx)
    if ids.dtype is not None and not ids.dtype.startswith(("int", "uint")):
        raise ShapeError(f"dequantize_take: the indices must be integers, got {info_str(ids)}")
    k = S.const(int(call.attrs["shape"][1]))
    if ids.shape is None:
        return TensorInfo(None, "float32", -1 if ids.ndim == -1 else ids.ndim + 1)
    return TensorInfo((*ids.shape, k), "float32")


def dequantize_linear(x: Expr, arrays: Sequence[Expr], packing: str, shape: tuple[int, int]) -> Call:
    return make_call("dequantize_linear", (x, *arrays), packing=packing, shape=tuple(shape))


def int_dot_linear(x: Expr, arrays: Sequence[Expr], packing: str, shape: tuple[int, int]) -> Call:
    return make_call("int_dot_linear", (x, *arrays), packing=packing, shape=tuple(shape))


def dequantize_take(ids: Expr, arrays: Sequence[Expr], packing: str, shape: tuple[int, int]) -> Call:
    return make_call("dequantize_take", (ids, *arrays), packing=packing, shape=tuple(shape))


# ---------------------------------------------------------------------------------------------
# numpy semantics (the interpreter's), from the packing's own reference dequantization


def _weight(arrays: Sequence[np.ndarray], packing: str, shape) -> np.ndarray:
    from llm_deploy.quantization.pack import unpack

    p = packing_from_key(packing)
    shape = tuple(int(d) for d in shape)
    names = [s.suffix for s in p.arrays(shape)]  # type: ignore[arg-type]
    return unpack(p, dict(zip(names, arrays)), shape)  # type: ignore[arg-type]


def _impl_linear(x, *arrays, packing, shape):
    w = _weight(arrays, packing, shape)
    return np.matmul(x.astype(np.float32), w.T).astype(x.dtype)


def _impl_int_dot(x, *arrays, packing, shape):
    from llm_deploy.quantization.int_dot import int_dot_linear as reference

    p = packing_from_key(packing)
    names = [s.suffix for s in p.arrays(tuple(int(d) for d in shape))]  # type: ignore[arg-type]
    return reference(x, p.ggml_type, dict(zip(names, arrays)))  # type: ignore[attr-defined]


def _impl_take(ids, *arrays, packing, shape):
    return np.take(_weight(arrays, packing, shape), ids.astype(np.int64), axis=0)


def _register_impls() -> None:
    from llm_deploy.compiler.interpreter import register_impl

    register_impl("dequantize_linear")(_impl_linear)
    register_impl("dequantize_take")(_impl_take)
    register_impl("int_dot_linear")(_impl_int_dot)


_register_impls()

from llm_deploy.compiler.ops import lower_quantized as _lower_quantized  # noqa: E402, F401  isort: skip
from llm_deploy.compiler.ops import lower_int_dot as _lower_int_dot  # noqa: E402, F401  isort: skip
