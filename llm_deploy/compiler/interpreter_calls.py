"""The interpreter's cross-level calls: call_tir runs a PrimFunc (tir_interpreter), call_extern a
registered library function (externs). Both allocate the outputs that `out_info` describes and
pass them last, as compiled code would (destination-passing style)."""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_deploy.compiler import tir, tir_interpreter
from llm_deploy.compiler.expr import ExternFunc, GlobalVar
from llm_deploy.compiler.externs import get_extern
from llm_deploy.compiler.interpreter import InterpreterError, OpContext, register_impl
from llm_deploy.compiler.struct_info import TensorInfo, TupleInfo


def _outputs(ctx: OpContext) -> tuple[list[np.ndarray], Any]:
    """Fresh output arrays for call.sinfo_args[0], and how to return them (one, or a tuple)."""
    (info,) = ctx.call.sinfo_args
    fields = info.fields if isinstance(info, TupleInfo) else (info,)
    outs = []
    for f in fields:
        if not isinstance(f, TensorInfo) or f.dtype is None:
            raise InterpreterError(f"call {ctx.call.op}: output {f} needs a known shape and dtype")
        outs.append(np.empty(ctx.shape_of(f), dtype=f.dtype))
    return outs, (tuple(outs) if isinstance(info, TupleInfo) else outs[0])


@register_impl("call_tir", context=True)
def _call_tir(ctx: OpContext, callee: GlobalVar, args: tuple, shape_args: tuple = ()) -> Any:
    func = ctx.module[callee.name]
    if not isinstance(func, tir.PrimFunc):
        raise InterpreterError(f"call_tir: {callee.name} is a {type(func).__name__}, not a PrimFunc")
    outs, result = _outputs(ctx)
    tir_interpreter.run(func, *args, *outs, *(int(s) for s in shape_args), name=callee.name)
    return result


def _call_extern(ctx: OpContext, callee: ExternFunc, args: tuple) -> Any:
    ext = get_extern(callee.name)
    outs, result = _outputs(ctx)
    ext.fn(*args, *outs)
    return result


register_impl("call_extern", context=True)(_call_extern)
register_impl("call_extern_pure", context=True)(_call_extern)


@register_impl("call_extern_value", context=True)
def _call_extern_value(ctx: OpContext, callee: ExternFunc, args: tuple) -> Any:
    """Not DPS: the extern returns its value (the match_cast after it checks it)."""
    return get_extern(callee.name).fn(*args)
