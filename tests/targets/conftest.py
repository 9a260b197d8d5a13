"""One compiled LLVM module with every test kernel, built once per session (compiling is the
slow part: ~25 ms per kernel at O3), and helpers to run a case three ways."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.targets.llvm.codegen import codegen
from tests.targets.llvm_cases import CASES, heavy_parallel


@pytest.fixture(scope="session")
def llvm_module():
    funcs = {name: case.func for name, case in CASES.items()}
    funcs["heavy_parallel"] = heavy_parallel()
    module = codegen(funcs)
    yield module
    module.close()


def copy_args(args: list) -> list:
    return [a.copy() if isinstance(a, np.ndarray) else a for a in args]


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float, what: str) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        f"{what}: got {actual.dtype}{actual.shape}, expected {expected.dtype}{expected.shape}"
    )
    if rtol == 0 and atol == 0:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(
            actual.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol, err_msg=what
        )
