"""softmax, rms_norm, layer_norm: deduction and execution against numpy formulas."""

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.ops import ShapeError
from llm_deploy.compiler.struct_info import TensorInfo, tensor

n = S.var("n")


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize(
    "x", [tensor((n, 4, 16)), TensorInfo(None, "float32", 3), TensorInfo(None, "float16", -1)]
)
def test_softmax_keeps_the_input_info(deduce, x):
    assert deduce(lambda p: ops.softmax(p, axis=1), x) == x


def test_softmax_bad_axis(deduce):
    with pytest.raises(ShapeError, match="softmax: axis 2 out of range for a tensor of rank 2"):
        deduce(lambda p: ops.softmax(p, 2), tensor((n, 4)))


@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("symbolic", [False, True])
def test_softmax_runs(run_op, rng, axis, symbolic):
    a = (rng.standard_normal((3, 5)) * 10).astype("float32")
    np.testing.assert_allclose(
        run_op(lambda p: ops.softmax(p, axis), a, symbolic=symbolic), np_softmax(a, axis), rtol=1e-5
    )


def test_softmax_float16_is_computed_wide(run_op, rng):
    a = (rng.standard_normal((4, 50)) * 8).astype("float16")
    got = run_op(ops.softmax, a)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, np_softmax(a.astype("float64"), -1).astype("float16"), atol=1e-3)


@pytest.mark.parametrize(
    "x, w, axis, expected",
    [
        (tensor((n, 64)), tensor((64,)), -1, tensor((n, 64))),
        (tensor((n, 4, 16)), tensor((4, 16)), (-2, -1), tensor((n, 4, 16))),
        (tensor((n, 4, 16)), tensor((n,)), 0, tensor((n, 4, 16))),
        (TensorInfo(None, "float32", 2), tensor((64,)), -1, TensorInfo(None, "float32", 2)),
        (tensor((n, 64)), TensorInfo(None, "float32", 1), -1, tensor((n, 64))),
    ],
)
def test_rms_norm_deduction(deduce, x, w, axis, expected):
    assert deduce(lambda p, q: ops.rms_norm(p, q, 1e-6, axis), x, w) == expected


@pytest.mark.parametrize(
    "x, w, message",
    [
        (
            tensor((n, 64)),
            tensor((32,)),
            r"rms_norm: dim 1 of the input and the weight must match \(64 vs 32\)",
        ),
        (tensor((n, 64)), tensor((1, 64)), "the weight must have one dim per normalized axis"),
        (tensor((n, 64)), tensor((64,), "float16"), "dtypes differ"),
    ],
)
def test_rms_norm_conflicts(deduce, x, w, message):
    with pytest.raises(ShapeError, match=message):
        deduce(ops.rms_norm, x, w)


@pytest.mark.parametrize("symbolic", [False, True])
def test_rms_norm_runs(run_op, rng, symbolic):
    x = rng.standard_normal((5, 16)).astype("float32")
    w = rng.standard_normal(16).astype("float32")
    want = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(
        run_op(lambda p, q: ops.rms_norm(p, q, 1e-6), x, w, symbolic=symbolic), want, rtol=1e-5
    )
    # over the leading axis, the weight broadcast along it
    w0 = rng.standard_normal(5).astype("float32")
    want0 = x / np.sqrt(np.mean(x * x, axis=0, keepdims=True) + 1e-6) * w0[:, None]
    np.testing.assert_allclose(
        run_op(lambda p, q: ops.rms_norm(p, q, 1e-6, 0), x, w0, symbolic=symbolic), want0, rtol=1e-5
    )


def test_layer_norm_deduction(deduce):
    assert deduce(ops.layer_norm, tensor((n, 64)), tensor((64,)), tensor((64,))) == tensor((n, 64))
    with pytest.raises(
        ShapeError, match=r"layer_norm: dim 1 of the input and the beta must match \(64 vs 63\)"
    ):
        deduce(ops.layer_norm, tensor((n, 64)), tensor((64,)), tensor((63,)))


@pytest.mark.parametrize("symbolic", [False, True])
def test_layer_norm_runs(run_op, rng, symbolic):
    x = (rng.standard_normal((2, 3, 8)) + 3).astype("float32")
    g, b = rng.standard_normal((2, 8)).astype("float32")
    mu = x.mean(-1, keepdims=True)
    want = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b
    got = run_op(lambda p, q, r: ops.layer_norm(p, q, r), x, g, b, symbolic=symbolic)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
