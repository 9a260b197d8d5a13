"""Lowerings of full / zeros / ones / arange / causal_mask: a nest with no inputs.

Symbolic operands (arange's start, the mask's offset) become scalar params, so one PrimFunc
serves every value; sizes bind from the output buffer's shape.
"""

from __future__ import annotations

import numpy as np

from llm_deploy.compiler import te, tir
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.lower_common import Lowered, fresh_scalar, known, lowered
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.shape import SymVar
from llm_deploy.compiler.struct_info import PrimInfo, StructInfo


def _imm(value, dtype: str) -> tir.Imm:
    if dtype == "bool":
        return tir.Imm(bool(value), dtype)
    if dtype in tir.FLOAT_DTYPES:
        return tir.Imm(float(value), dtype)
    return tir.Imm(int(value), dtype)


def _filled(fill):
    def lower(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext) -> Lowered | None:
        out = known(out_info)
        if out is None:
            return None
        value = _imm(fill(call), out.dtype)  # type: ignore[arg-type]
        Y = te.compute(out.shape, lambda *idx: value, "Out")
        return lowered((), [], [Y])

    return lower


register_legalize("full")(_filled(lambda call: call.attrs["fill_value"]))
register_legalize("zeros")(_filled(lambda call: 0))
register_legalize("ones")(_filled(lambda call: 1))


@register_legalize("arange")
def _lower_arange(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    out = known(out_info)
    start, step = infos[0], infos[2]
    if out is None or not isinstance(start, PrimInfo) or not isinstance(step, PrimInfo):
        return None
    if start.value is None or step.value is None:
        return None
    s = SymVar(fresh_scalar("start", [out]))
    Y = te.compute(out.shape, lambda i: tir.cast(out.dtype, s + i * step.value), "Out")
    return lowered((), [], [Y], scalars={s.name: start.value})


@register_legalize("causal_mask")
def _lower_causal_mask(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    out = known(out_info)
    offset = infos[1]
    if out is None or not isinstance(offset, PrimInfo) or offset.value is None:
        return None
    off = SymVar(fresh_scalar("offset", [out]))
    dtype = out.dtype
    assert dtype is not None

    def element(i, j):
        allowed = tir.binary("le", j, i + off)  # query i sees key j iff j <= i + offset
        if dtype == "bool":
            return allowed
        return tir.select(allowed, _imm(0, dtype), _imm(np.finfo(dtype).min, dtype))

    Y = te.compute(out.shape, element, "Out")
    return lowered((), [], [Y], scalars={off.name: offset.value})
