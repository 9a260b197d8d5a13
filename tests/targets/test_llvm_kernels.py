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


def test_exp_is_within_one_ulp_over_the_whole_float32_range(llvm_module):
    """exp is inlined (Cephes' polynomial) rather than a libm call per lane; it must still be
    right from underflow through the subnormals to overflow, and on inf and nan."""
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 88.73, -104.5], np.float32)  # exact results
    edges = np.array([88.72, 88.7228, -87.34, -103.9], np.float32)
    x = np.concatenate([np.linspace(-110, 90, 200_003, dtype=np.float32), edges, specials])
    out = np.zeros_like(x)
    llvm_module["intrin_exp_float32"](x, out)
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64))
        np.testing.assert_array_equal(out[-len(specials) :], np.exp(specials))
    normal = (exact > np.finfo(np.float32).tiny) & (exact < np.finfo(np.float32).max)
    ulps = np.abs(out[normal] - exact[normal]) / np.spacing(exact[normal].astype(np.float32))
    assert ulps.max() <= 1.5
    subnormal = (exact <= np.finfo(np.float32).tiny) & np.isfinite(x)
    assert np.abs(out[subnormal] - exact[subnormal]).max() <= 2 * np.finfo(np.float32).smallest_subnormal


@pytest.mark.parametrize("name", ["cos", "sin"])
def test_sin_and_cos_are_within_two_ulp_far_from_zero(llvm_module, name):
    """sin and cos are inlined (argument reduced in float64, Cephes' polynomials) rather than a
    libm call per lane; rotary embeddings take them of position x frequency, up to ~1e5 radians
    at long contexts, so the reduction must hold far from zero. inf and nan give nan."""
    rng = np.random.default_rng(0)
    x = np.concatenate([
        np.linspace(-10, 10, 100_003, dtype=np.float32),
        (rng.standard_normal(100_000) * 10.0 ** rng.uniform(0, 6, 100_000)).astype(np.float32),
        np.float32([0.0, -0.0, np.pi / 2, 8191.0 * 1.0, 131071.0 * 0.5]),
    ])  # fmt: skip
    out = np.zeros_like(x)
    llvm_module[f"intrin_{name}_float32"](x, out)
    exact = getattr(np, name)(x.astype(np.float64))
    assert np.abs(out - exact).max() <= 2 * np.spacing(np.float32(0.5))  # 2 ulp of results in [0.5, 1)
    specials = np.float32([np.inf, -np.inf, np.nan])
    out = np.zeros_like(specials)
    llvm_module[f"intrin_{name}_float32"](specials, out)
    assert np.isnan(out).all()
