"""Extern library functions: a registry from a stable name to a numpy implementation.

`call_extern("numpy.matmul", (a, b), out_info)` calls a library function in destination-passing
style, `fn(*inputs, *outputs)`, like call_tir. One table serves the interpreter and the VM; it
lives in the runtime because artifacts run without the compiler. The KV cache's functions
(`kv_cache.*`) are registered here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExternDef:
    name: str
    fn: Callable[..., None]  # fn(*inputs, *outputs): writes the outputs in place
    pure: bool = True  # pure externs may be called inside dataflow blocks
    doc: str = ""


EXTERNS: dict[str, ExternDef] = {}


def register_extern(name: str, *, pure: bool = True) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        if name in EXTERNS:
            raise ValueError(f"extern {name!r} is registered twice")
        EXTERNS[name] = ExternDef(name, fn, pure, (fn.__doc__ or "").strip())
        return fn

    return deco


def get_extern(name: str) -> ExternDef:
    try:
        return EXTERNS[name]
    except KeyError:
        raise KeyError(
            f"no extern function named {name!r}; registered: {', '.join(sorted(EXTERNS)) or 'none'}"
        ) from None


def _wide(x: np.ndarray) -> np.ndarray:
    return x.astype(np.promote_types(x.dtype, np.float32), copy=False) if x.dtype.kind == "f" else x


@register_extern("numpy.matmul")
def _matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """The `matmul` op (numpy semantics, float16 accumulated in float32)."""
    out[...] = np.matmul(_wide(a), _wide(b))


@register_extern("numpy.linear")
def _linear(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """The `linear` op: x @ w^T with w stored [out_features, in_features]."""
    out[...] = np.matmul(_wide(x), np.swapaxes(_wide(w), -1, -2))


@register_extern("numpy.softmax")
def _softmax(x: np.ndarray, out: np.ndarray) -> None:
    """The `softmax` op over the last axis."""
    y = _wide(x)
    y = np.exp(y - y.max(axis=-1, keepdims=True))
    out[...] = y / y.sum(axis=-1, keepdims=True)


def _register_kv_cache() -> None:
    from llm_deploy.kv_cache.externs import KV_EXTERNS

    for name, fn in KV_EXTERNS.items():
        # The cache's writes are the ones begin_forward prepared: repeating them is harmless.
        EXTERNS[name] = ExternDef(name, fn, True, (fn.__doc__ or "").strip())


_register_kv_cache()
