"""Every test kernel, compiled once, equals numpy and the tir interpreter for n in {1, 7, 64, 300}.

The op tables (`bin_*`, `intrin_*`, `cast_*`) run one vectorized loop over n: n = 1 and 7 run only
the scalar tail, 64 only whole vectors, 300 both, so each op is checked in vector and scalar code.
"""

import numpy as np
import pytest

from llm_deploy.compiler.tir_interpreter import run
from tests.targets.conftest import assert_close, copy_args
from tests.targets.llvm_cases import CASES, NS


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_matches_numpy_and_interpreter(llvm_module, name):
    case = CASES[name]
    kernel = llvm_module[name]
    for n in NS:
        args = case.make_args(np.random.default_rng(n), n)
        compiled = copy_args(args)
        kernel(*compiled)
        if case.reference is not None:
            expected = case.reference(*copy_args(args))
            for out, want in zip(case.outputs, expected):
                assert_close(
                    compiled[out], want, case.rtol, case.atol, f"{name}, n={n}, output {out} vs numpy"
                )
        if case.interpret:
            interpreted = copy_args(args)
            run(case.func, *interpreted, name=name)
            for out in case.outputs:
                assert_close(
                    compiled[out],
                    interpreted[out],
                    case.rtol,
                    case.atol,
                    f"{name}, n={n}, output {out} vs interpreter",
                )
