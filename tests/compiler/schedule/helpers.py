"""Equality of a scheduled PrimFunc and the original, on random inputs for several sizes.

Outputs are the last `outputs` buffer params (te's order: inputs, then outputs). Every symbolic
dim of the buffers takes each value of `sizes` (one dict per run, or one int for every dim).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.tir_interpreter import run

Gen = Callable[[np.random.Generator, tuple[int, ...], str], np.ndarray]


def make_args(f: T.PrimFunc, sizes: dict[str, int], outputs: int, rng, gens: dict[str, Gen] | None = None):
    args = []
    buffers = f.buffers
    for k, b in enumerate(buffers):
        shape = tuple(S.evaluate(d, sizes) for d in b.shape)
        if k >= len(buffers) - outputs:
            args.append(np.zeros(shape, b.dtype))
        elif gens and b.name in gens:
            args.append(gens[b.name](rng, shape, b.dtype))
        elif np.dtype(b.dtype).kind == "f":
            args.append(rng.standard_normal(shape).astype(b.dtype))
        elif b.dtype == "bool":
            args.append(rng.random(shape) < 0.5)
        else:
            args.append(rng.integers(0, 4, shape).astype(b.dtype))
    args += [sizes[v.name] for v in f.scalars]
    return args


def size_dicts(f: T.PrimFunc, sizes: Iterable[int | dict[str, int]]) -> list[dict[str, int]]:
    names = sorted(
        {v for b in f.buffers for d in b.shape for v in S.free_vars(d)} | {v.name for v in f.scalars}
    )
    return [s if isinstance(s, dict) else dict.fromkeys(names, s) for s in sizes]


def assert_same(
    before: T.PrimFunc,
    after: T.PrimFunc,
    sizes: Iterable[int | dict[str, int]] = (1, 2, 3, 5, 8, 13),
    outputs: int = 1,
    rtol: float = 1e-5,
    gens: dict[str, Gen] | None = None,
    kernel: Callable | None = None,
) -> None:
    """`after` (interpreted, and compiled when `kernel` is given) computes what `before` does."""
    rng = np.random.default_rng(0)
    for sz in size_dicts(before, sizes):
        args = make_args(before, sz, outputs, rng, gens)
        nbuf = len(before.buffers)
        want = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        got = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        run(before, *want)
        run(after, *got)
        runs = [("interpreted", got)]
        if kernel is not None:
            compiled = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
            kernel(*compiled)
            runs.append(("compiled", compiled))
        for how, res in runs:
            for k in range(nbuf - outputs, nbuf):
                np.testing.assert_allclose(
                    res[k], want[k], rtol=rtol, atol=rtol, err_msg=f"{how}, output {k}, sizes {sz}"
                )
