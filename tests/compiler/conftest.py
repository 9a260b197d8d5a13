"""Fixtures for op tests: deduce an op's struct info, or run it through the interpreter.

def test_x(deduce, run_op):
    assert deduce(ops.permute_dims, tensor((n, 4))) == tensor((4, n))
    np.testing.assert_array_equal(run_op(ops.permute_dims, a), a.T)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Expr, Var
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.struct_info import StructInfo, TensorInfo


def one_op_module(
    make: Callable[..., Expr], infos: list[StructInfo], bounds: dict[str, tuple[int, int]] | None = None
) -> tuple[IRModule, Var]:
    """`f(p0, p1, ...) = make(p0, p1, ...)` as a module, and the var bound to the op's result.

    bounds: {symbolic var: (lo, hi)} known to the analyzer (by default only lo = 0).
    """
    params = [Var(f"p{i}", info) for i, info in enumerate(infos)]
    bb = BlockBuilder()
    with bb.function("f", params, attrs={"bounds": bounds} if bounds else None):
        out = bb.emit(make(*params), "out")
        bb.emit_func_output(out)
    return bb.get(), out


@pytest.fixture
def deduce() -> Callable[..., StructInfo]:
    """deduce(make, *param_infos, bounds=None): the info the builder deduces for make(*params)."""

    def go(make: Callable[..., Expr], *infos: StructInfo, bounds: dict | None = None) -> StructInfo:
        return one_op_module(make, list(infos), bounds)[1].info

    return go


def _param_info(value: Any, i: int, symbolic: bool) -> StructInfo:
    if symbolic:
        return TensorInfo(tuple(S.var(f"d{i}_{k}") for k in range(value.ndim)), str(value.dtype))
    return TensorInfo(value.shape, str(value.dtype))


@pytest.fixture
def run_op() -> Callable[..., Any]:
    """run_op(make, *arrays, symbolic=False): interpret make(*params) on the arrays.

    The params have the arrays' exact shapes, or (symbolic=True) a fresh symbolic var per dim,
    so the same op is run once with static and once with run-time shapes. The interpreter
    checks the result against the deduced struct info as it goes.
    """

    def go(make: Callable[..., Expr], *arrays: np.ndarray, symbolic: bool = False) -> Any:
        infos = [_param_info(np.asarray(a), i, symbolic) for i, a in enumerate(arrays)]
        mod, _ = one_op_module(make, infos)
        return run(mod, "f", *arrays)

    return go


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
