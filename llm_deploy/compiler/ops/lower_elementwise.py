"""Lowerings of the elementwise ops: one loop nest over the output, operands read broadcast."""

from __future__ import annotations

import math
from collections.abc import Callable

from llm_deploy.compiler import te, tir
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.elementwise import BINARY, COMPARE, UNARY
from llm_deploy.compiler.ops.lower_common import (
    Lowered,
    all_known,
    broadcast_index,
    known,
    lowered,
    placeholders,
)
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.struct_info import StructInfo
from llm_deploy.compiler.tir import Value, binary, cast, intrin, select


def _is_int(v: Value) -> bool:
    return tir.dtype_of(v) not in tir.FLOAT_DTYPES


def _divide(a: Value, b: Value) -> Value:
    # Integer division keeps the dtype and floors (the interpreter's, and shape arithmetic's).
    return binary("floordiv" if _is_int(a) else "div", a, b)


def _gelu(x: Value) -> Value:
    # The exact (erf) form: 0.5 x (1 + erf(x / sqrt 2)).
    return 0.5 * x * (1.0 + intrin("erf", x * (1.0 / math.sqrt(2.0))))


def _abs(x: Value) -> Value:
    return intrin("abs", x)


# op -> scalar function of the operands' elements
SCALAR: dict[str, Callable[..., Value]] = {
    "add": lambda a, b: binary("add", a, b),
    "subtract": lambda a, b: binary("sub", a, b),
    "multiply": lambda a, b: binary("mul", a, b),
    "divide": _divide,
    "power": lambda a, b: binary("pow", a, b),
    "maximum": lambda a, b: binary("max", a, b),
    "minimum": lambda a, b: binary("min", a, b),
    "equal": lambda a, b: binary("eq", a, b),
    "not_equal": lambda a, b: binary("ne", a, b),
    "less": lambda a, b: binary("lt", a, b),
    "less_equal": lambda a, b: binary("le", a, b),
    "greater": lambda a, b: binary("gt", a, b),
    "greater_equal": lambda a, b: binary("ge", a, b),
    "negative": lambda x: intrin("neg", x),
    "exp": lambda x: intrin("exp", x),
    "log": lambda x: intrin("log", x),
    "sqrt": lambda x: intrin("sqrt", x),
    "rsqrt": lambda x: intrin("rsqrt", x),
    "tanh": lambda x: intrin("tanh", x),
    "sigmoid": lambda x: intrin("sigmoid", x),
    "silu": lambda x: x * intrin("sigmoid", x),
    "gelu": _gelu,
    "abs": _abs,
    "cos": lambda x: intrin("cos", x),
    "sin": lambda x: intrin("sin", x),
    "where": lambda c, a, b: select(c, a, b),
}
assert set(SCALAR) == {*BINARY, *COMPARE, *UNARY, "where"}, "every elementwise op needs a lowering"


def _elementwise(name: str, fn: Callable[..., Value]):
    def lower(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext) -> Lowered | None:
        operands, out = all_known(infos), known(out_info)
        if operands is None or out is None:
            return None
        inputs = placeholders(operands)
        shape = out.shape

        def element(*idx):
            return fn(*(broadcast_index(t, shape, idx) for t in inputs))

        result = te.compute(shape, element, "Out", dtype=out.dtype)
        return lowered(call.args, inputs, [result])

    lower.__name__ = f"lower_{name}"
    return lower


for _name, _fn in SCALAR.items():
    register_legalize(_name)(_elementwise(_name, _fn))


@register_legalize("astype")
def _lower_astype(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    operands, out = all_known(infos), known(out_info)
    if operands is None or out is None:
        return None
    (x,) = placeholders(operands)
    result = te.compute(out.shape, lambda *idx: cast(out.dtype, x[idx]), "Out")
    return lowered(call.args, [x], [result])
