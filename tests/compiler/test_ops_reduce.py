"""Reductions: deduction (axes, keepdims, symbolic and unknown shapes) and execution."""

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.ops import ShapeError
from llm_deploy.compiler.struct_info import TensorInfo, tensor

n, m = S.var("n"), S.var("m")
REDUCE = [ops.sum, ops.mean, ops.max, ops.min]


def ndim_only(ndim, dtype="float32"):
    return TensorInfo(None, dtype, ndim)


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize(
    "x, axis, keepdims, expected",
    [
        (tensor((n, m, 4)), -1, False, tensor((n, m))),
        (tensor((n, m, 4)), [0, 2], False, tensor((m,))),
        (tensor((n, m, 4)), [0, 2], True, tensor((1, m, 1))),
        (tensor((n, m, 4)), None, False, tensor(())),
        (tensor((n, m, 4)), None, True, tensor((1, 1, 1))),
        (ndim_only(3), 1, False, ndim_only(2)),
        (ndim_only(-1), 1, True, ndim_only(-1)),
        (ndim_only(-1), None, False, ndim_only(-1)),
    ],
)
def test_reduce_deduction(deduce, op, x, axis, keepdims, expected):
    assert deduce(lambda p: op(p, axis, keepdims), x) == expected


@pytest.mark.parametrize(
    "axis, message", [(3, "sum: axis 3 out of range for a tensor of rank 3"), ([0, -3], "repeated axis")]
)
def test_reduce_bad_axes(deduce, axis, message):
    with pytest.raises(ShapeError, match=message):
        deduce(lambda p: ops.sum(p, axis), tensor((n, m, 4)))


@pytest.mark.parametrize(
    "op, ref", [(ops.sum, np.sum), (ops.mean, np.mean), (ops.max, np.max), (ops.min, np.min)]
)
@pytest.mark.parametrize("axis, keepdims", [(None, False), (1, False), ((0, 2), True), (-1, True)])
@pytest.mark.parametrize("symbolic", [False, True])
def test_reduce_runs(run_op, rng, op, ref, axis, keepdims, symbolic):
    a = rng.standard_normal((2, 3, 4)).astype("float32")
    got = run_op(lambda p: op(p, axis, keepdims), a, symbolic=symbolic)
    want = ref(a, axis=axis, keepdims=keepdims)
    assert got.dtype == np.float32 and got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_integer_sum_keeps_its_dtype(run_op):
    a = np.arange(12, dtype="int32").reshape(3, 4)
    got = run_op(lambda p: ops.sum(p, 0), a)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, a.sum(0))


@pytest.mark.parametrize("op", [ops.argmax, ops.argmin])
@pytest.mark.parametrize(
    "x, axis, keepdims, expected",
    [
        (tensor((n, 4)), -1, False, tensor((n,), "int64")),
        (tensor((n, 4)), 0, True, tensor((1, 4), "int64")),
        (tensor((n, 4)), None, False, tensor((), "int64")),
        (ndim_only(2), 1, False, ndim_only(1, "int64")),
    ],
)
def test_arg_reduce_deduction(deduce, op, x, axis, keepdims, expected):
    assert deduce(lambda p: op(p, axis, keepdims), x) == expected


@pytest.mark.parametrize("op, ref", [(ops.argmax, np.argmax), (ops.argmin, np.argmin)])
@pytest.mark.parametrize("axis, keepdims", [(None, False), (1, False), (0, True)])
@pytest.mark.parametrize("symbolic", [False, True])
def test_arg_reduce_runs(run_op, rng, op, ref, axis, keepdims, symbolic):
    a = rng.standard_normal((5, 7)).astype("float32")
    got = run_op(lambda p: op(p, axis, keepdims), a, symbolic=symbolic)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref(a, axis=axis, keepdims=keepdims))
