"""What every pass test does: parse the before text, run the pass, compare with the expected text
(alpha-equivalence), check well-formedness, and run both modules on random inputs for several
values of each symbolic dim."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import wellformed
from llm_deploy.compiler.expr import Function
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.shape import evaluate
from llm_deploy.compiler.testing import assert_structural_equal

SIZES = ({"n": 1, "m": 2}, {"n": 3, "m": 1}, {"n": 7, "m": 5})


def random_args(func: Function, sizes: dict, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for p in func.params:
        info = p.info
        assert isinstance(info, SI.TensorInfo) and info.shape is not None, f"param {p.name}: {info}"
        shape = tuple(evaluate(d, sizes) for d in info.shape)
        if info.dtype.startswith("int"):
            out.append(rng.integers(0, 4, shape).astype(info.dtype))
        elif info.dtype == "bool":
            out.append(rng.random(shape) < 0.5)
        else:
            out.append(rng.standard_normal(shape).astype(info.dtype))
    return out


def assert_same_results(
    before: IRModule, after: IRModule, entry: str = "main", sizes: Sequence[dict] = SIZES, rtol: float = 1e-5
) -> None:
    rng = np.random.default_rng(0)
    for s in sizes:
        args = random_args(before[entry], s, rng)
        want = run(before, entry, *args)
        got = run(after, entry, *args)
        for w, g in zip(_flat(want), _flat(got)):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol, err_msg=f"sizes {s}")


def _flat(v):
    return [x for item in v for x in _flat(item)] if isinstance(v, (tuple, list)) else [v]


def check_pass(
    pass_: Callable[[IRModule], IRModule], before: str | IRModule, expected: str | None, **kw
) -> IRModule:
    mod = parse(before) if isinstance(before, str) else before
    wellformed.check(mod)
    after = pass_(mod)
    wellformed.check(after)
    if expected is not None:
        assert_structural_equal(after, expected)
    assert_same_results(mod, after, **kw)
    return after
