"""Graph-level operators. Importing this package registers every op family."""

from llm_deploy.compiler.ops.attention import attention, rope, rope_inv_freq
from llm_deploy.compiler.ops.builtin import call_extern, call_tir
from llm_deploy.compiler.ops.create import arange, causal_mask, full, ones, zeros
from llm_deploy.compiler.ops.elementwise import (
    abs,
    add,
    astype,
    cos,
    divide,
    equal,
    exp,
    gelu,
    greater,
    greater_equal,
    less,
    less_equal,
    log,
    maximum,
    minimum,
    multiply,
    negative,
    not_equal,
    power,
    rsqrt,
    sigmoid,
    silu,
    sin,
    sqrt,
    subtract,
    tanh,
    where,
)
from llm_deploy.compiler.ops.kv_cache import kv_cache_attention, kv_cache_positions
from llm_deploy.compiler.ops.linalg import linear, matmul
from llm_deploy.compiler.ops.manipulate import (
    broadcast_to,
    concat,
    expand_dims,
    permute_dims,
    reshape,
    split,
    squeeze,
    strided_slice,
    take,
)
from llm_deploy.compiler.ops.nn import layer_norm, rms_norm, softmax
from llm_deploy.compiler.ops.reduce import argmax, argmin, max, mean, min, sum
from llm_deploy.compiler.ops.registry import OPS, ShapeError, get_op, make_call

from llm_deploy.compiler.ops import lower_all as _lower_all  # noqa: F401, E402  isort: skip  (lowerings)

__all__ = [
    "OPS",
    "ShapeError",
    "get_op",
    "make_call",
    "call_extern",
    "call_tir",
    "abs",
    "add",
    "astype",
    "cos",
    "divide",
    "equal",
    "exp",
    "gelu",
    "greater",
    "greater_equal",
    "less",
    "less_equal",
    "log",
    "maximum",
    "minimum",
    "multiply",
    "negative",
    "not_equal",
    "power",
    "rsqrt",
    "sigmoid",
    "silu",
    "sin",
    "sqrt",
    "subtract",
    "tanh",
    "where",
    # layout
    "broadcast_to",
    "concat",
    "expand_dims",
    "permute_dims",
    "reshape",
    "split",
    "squeeze",
    "strided_slice",
    "take",
    # linear algebra
    "linear",
    "matmul",
    # reductions
    "argmax",
    "argmin",
    "max",
    "mean",
    "min",
    "sum",
    # nn
    "layer_norm",
    "rms_norm",
    "softmax",
    # creation
    "arange",
    "causal_mask",
    "full",
    "ones",
    "zeros",
    # attention
    "attention",
    "rope",
    "rope_inv_freq",
    # KV cache
    "kv_cache_attention",
    "kv_cache_positions",
]
