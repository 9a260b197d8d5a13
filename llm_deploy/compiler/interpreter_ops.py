"""The numpy semantics of every graph-level op: the interpreter's table, one entry per op.

Each function takes the operands' run-time values (arrays, ints, ShapeTuples, tuples) and the
op's attributes as keywords, and returns a value of exactly the dtype the op's deduction states
(the interpreter checks). Floating-point statistics (softmax, norms, attention) are computed in
at least float32 whatever the input dtype, then cast back, as transformers does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from llm_deploy.compiler.interpreter import register_impl
from llm_deploy.compiler.ops.attention import rope_inv_freq


def _wide(x: np.ndarray) -> np.ndarray:
    """x in float32 or wider (float16 statistics would lose what the oracle must keep)."""
    return x.astype(np.promote_types(x.dtype, np.float32), copy=False)


def _axes(axis: int | Sequence[int] | None) -> int | tuple[int, ...] | None:
    return axis if axis is None or isinstance(axis, int) else tuple(axis)


# -- elementwise (ops/elementwise.py)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Integer division keeps the dtype (floor, like the symbolic shape arithmetic).
    if np.issubdtype(a.dtype, np.integer):
        return np.floor_divide(a, b)
    return np.true_divide(a, b)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + exp(-x))) never overflows, unlike 1 / (1 + exp(-x)) for very negative x.
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype, copy=False)


_erf = np.vectorize(math.erf, otypes=[np.float64])

ELEMENTWISE = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": _divide,
    "power": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "negative": np.negative,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: (1 / np.sqrt(x)).astype(x.dtype, copy=False),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "silu": lambda x: x * _sigmoid(x),
    # The exact (erf) form, as torch's and transformers' default "gelu".
    "gelu": lambda x: (0.5 * x * (1 + _erf(x / math.sqrt(2)))).astype(x.dtype),
    "abs": np.abs,
    "cos": np.cos,
    "sin": np.sin,
}
for _name, _fn in ELEMENTWISE.items():
    register_impl(_name)(_fn)


@register_impl("where")
def _where(cond, a, b):
    return np.where(cond, a, b)


@register_impl("astype")
def _astype(x, dtype):
    return x.astype(dtype)


# -- linear algebra


@register_impl("matmul")
def _matmul(a, b, out_dtype=None):
    out = np.matmul(_wide(a), _wide(b)) if a.dtype.kind == "f" else np.matmul(a, b)
    return out.astype(out_dtype or a.dtype, copy=False)


@register_impl("linear")
def _linear(x, w, out_dtype=None):
    return _matmul(x, np.swapaxes(w, -1, -2), out_dtype)


# -- layout


@register_impl("permute_dims")
def _permute_dims(x, axes=None):
    return np.transpose(x, axes)


@register_impl("reshape")
def _reshape(x, shape):
    return np.reshape(x, tuple(shape))


@register_impl("broadcast_to")
def _broadcast_to(x, shape):
    return np.broadcast_to(x, tuple(shape)).copy()


@register_impl("expand_dims")
def _expand_dims(x, axis):
    return np.expand_dims(x, _axes(axis))


@register_impl("squeeze")
def _squeeze(x, axis=None):
    return np.squeeze(x, _axes(axis))


@register_impl("concat")
def _concat(tensors, axis=0):
    return np.concatenate(tensors, axis=axis)


@register_impl("split")
def _split(x, indices_or_sections, axis=0):
    spec = indices_or_sections if isinstance(indices_or_sections, int) else list(indices_or_sections)
    return tuple(np.split(x, spec, axis=axis))


@register_impl("strided_slice")
def _strided_slice(x, begin, end, axes, strides=None):
    index = [slice(None)] * x.ndim
    for a, b, e, s in zip(axes, begin, end, strides or (1,) * len(axes)):
        index[a] = slice(b, e, s)
    return x[tuple(index)].copy()


@register_impl("take")
def _take(x, indices, axis=0):
    return np.take(x, indices, axis=axis)


# -- reductions


def _reduce(fn):
    def impl(x, axis=None, keepdims=False):
        return np.asarray(fn(x, axis=_axes(axis), keepdims=keepdims)).astype(x.dtype, copy=False)

    return impl


for _name, _fn in (("sum", np.sum), ("mean", np.mean), ("max", np.max), ("min", np.min)):
    register_impl(_name)(_reduce(_fn))
for _name, _fn in (("argmax", np.argmax), ("argmin", np.argmin)):
    register_impl(_name)(
        lambda x, axis=None, keepdims=False, _fn=_fn: np.asarray(_fn(x, axis=axis, keepdims=keepdims)).astype(
            np.int64
        )
    )


# -- nn


def _softmax_wide(x: np.ndarray, axis: int) -> np.ndarray:
    y = _wide(x)
    y = np.exp(y - y.max(axis=axis, keepdims=True))
    return y / y.sum(axis=axis, keepdims=True)


@register_impl("softmax")
def _softmax(x, axis=-1):
    return _softmax_wide(x, axis).astype(x.dtype, copy=False)


def _param_view(p: np.ndarray, axes: Sequence[int], ndim: int) -> np.ndarray:
    """A weight over x's `axes` (in that order), shaped to broadcast against x."""
    axes = [a % ndim for a in axes]
    p = np.transpose(p, np.argsort(axes))
    return p.reshape([p.shape[sorted(axes).index(k)] if k in axes else 1 for k in range(ndim)])


@register_impl("rms_norm")
def _rms_norm(x, weight, eps=1e-5, axis=-1):
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    xf = _wide(x)
    ms = np.mean(xf * xf, axis=axes, keepdims=True)
    return (xf / np.sqrt(ms + eps)).astype(x.dtype) * _param_view(weight, axes, x.ndim)


@register_impl("layer_norm")
def _layer_norm(x, gamma, beta, eps=1e-5, axis=-1):
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    xf = _wide(x)
    mean = np.mean(xf, axis=axes, keepdims=True)
    var = np.mean((xf - mean) ** 2, axis=axes, keepdims=True)
    y = ((xf - mean) / np.sqrt(var + eps)).astype(x.dtype)
    return y * _param_view(gamma, axes, x.ndim) + _param_view(beta, axes, x.ndim)


# -- creation


@register_impl("full")
def _full(shape, fill_value, dtype="float32"):
    return np.full(tuple(shape), fill_value, dtype=dtype)


@register_impl("zeros")
def _zeros(shape, dtype="float32"):
    return np.zeros(tuple(shape), dtype=dtype)


@register_impl("ones")
def _ones(shape, dtype="float32"):
    return np.ones(tuple(shape), dtype=dtype)


@register_impl("arange")
def _arange(start, end, step, dtype="int64"):
    return np.arange(start, end, step).astype(dtype)


def _allowed(n: int, m: int, offset: int) -> np.ndarray:
    """(n, m): query i may see key j iff j <= i + offset."""
    return np.arange(m)[None, :] <= np.arange(n)[:, None] + offset


@register_impl("causal_mask")
def _causal_mask(shape, offset, dtype="bool"):
    allowed = _allowed(*shape, offset)
    if dtype == "bool":
        return allowed
    return np.where(allowed, 0, np.finfo(dtype).min).astype(dtype)


# -- attention


@register_impl("rope")
def _rope(x, pos, theta=10000.0, scaling=None):
    seq, head_dim = x.shape[-3], x.shape[-1]
    positions = np.asarray(pos, dtype=np.float64)
    if positions.ndim == 0:
        positions = positions + np.arange(seq, dtype=np.float64)
    freqs = positions[:, None] * rope_inv_freq(head_dim, theta, scaling)[None, :]  # (seq, d/2)
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]  # (seq, 1, d): every head alike
    xf = x.astype(np.float64)
    half = head_dim // 2
    rotated = np.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)  # rotate_half
    return (xf * np.cos(emb) + rotated * np.sin(emb)).astype(x.dtype)


@register_impl("attention")
def _attention(q, k, v, causal=True, scale=None):
    batched = q.ndim == 4
    if not batched:
        q, k, v = q[None], k[None], v[None]
    b, n, heads, d = q.shape
    m, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # Query head h = kv * group + g reads kv head h // group (transformers' repeat_kv).
    qg = _wide(q).reshape(b, n, kv_heads, group, d)
    scores = np.einsum("bnkgd,bmkd->bkgnm", qg, _wide(k)) * scale  # (b, KV, G, n, m)
    if causal:
        scores = np.where(_allowed(n, m, m - n), scores, np.finfo(scores.dtype).min)
    probs = _softmax_wide(scores, -1)
    out = np.einsum("bkgnm,bmke->bnkge", probs, _wide(v)).reshape(b, n, heads, v.shape[-1])
    out = out.astype(q.dtype)
    return out if batched else out[0]
