"""matmul (numpy semantics) and linear (x @ W^T, W stored [out, in]): deduction and execution."""

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.ops import ShapeError
from llm_deploy.compiler.struct_info import TensorInfo, tensor

n, m, b = S.var("n"), S.var("m"), S.var("b")


def ndim_only(ndim, dtype="float32"):
    return TensorInfo(None, dtype, ndim)


@pytest.mark.parametrize(
    "a, w, expected",
    [
        (tensor((n, 576)), tensor((576, 1536)), tensor((n, 1536))),
        (tensor((b, n, 64)), tensor((64, 32)), tensor((b, n, 32))),
        (tensor((b, 1, n, 64)), tensor((4, 64, m)), tensor((b, 4, n, m))),
        (tensor((64,)), tensor((64, 32)), tensor((32,))),
        (tensor((n, 64)), tensor((64,)), tensor((n,))),
        (tensor((64,)), tensor((64,)), tensor(())),
        (tensor((b, n, 64)), tensor((b, 64, m)), tensor((b, n, m))),
        (tensor((n, m)), tensor((m, n)), tensor((n, n))),
        # partially known
        (ndim_only(3), tensor((64, 32)), ndim_only(3)),
        (tensor((n, 64)), ndim_only(-1), ndim_only(-1)),
        (tensor((n, 64)), tensor((b, 64, 8)), tensor((b, n, 8))),
    ],
)
def test_matmul_deduction(deduce, a, w, expected):
    assert deduce(ops.matmul, a, w) == expected


def test_matmul_keeps_contraction_dims_that_might_agree(deduce):
    # m may equal 64 at run time: not a build-time error.
    assert deduce(ops.matmul, tensor((n, 64)), tensor((m, 8))) == tensor((n, 8))


@pytest.mark.parametrize(
    "a, w, message",
    [
        (
            tensor((n, 576)),
            tensor((512, 1536)),
            r"matmul: contraction dims differ: \(n, 576\) @ \(512, 1536\) \(576 vs 512\)",
        ),
        (tensor((n, m)), tensor((m + 1, 4)), r"contraction dims differ.*\(m vs m \+ 1\)"),
        (
            tensor((2, n, 64)),
            tensor((3, 64, 8)),
            r"matmul: batch dims of \(2, n, 64\) and \(3, 64, 8\) do not broadcast",
        ),
        (tensor(()), tensor((4,)), "rank >= 1"),
        (tensor((n, 4)), tensor((4, 8), "float16"), "dtypes differ"),
    ],
)
def test_matmul_conflicts(deduce, a, w, message):
    with pytest.raises(ShapeError, match=message):
        deduce(ops.matmul, a, w)


def test_matmul_out_dtype(deduce, run_op, rng):
    assert deduce(
        lambda x, y: ops.matmul(x, y, out_dtype="float32"),
        tensor((n, 4), "float16"),
        tensor((4, 2), "float16"),
    ) == tensor((n, 2))
    a = rng.standard_normal((3, 4)).astype("float16")
    w = rng.standard_normal((4, 2)).astype("float16")
    out = run_op(lambda x, y: ops.matmul(x, y, out_dtype="float32"), a, w)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a.astype("float32") @ w.astype("float32"), rtol=1e-6)


@pytest.mark.parametrize(
    "shapes",
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((2, 1, 3, 4), (5, 4, 2)),
        ((4,), (4, 5)),
        ((3, 4), (4,)),
        ((4,), (4,)),
    ],
)
@pytest.mark.parametrize("symbolic", [False, True])
def test_matmul_runs(run_op, rng, shapes, symbolic):
    a, w = (rng.standard_normal(s).astype("float32") for s in shapes)
    np.testing.assert_allclose(
        run_op(ops.matmul, a, w, symbolic=symbolic), np.matmul(a, w), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "x, w, expected",
    [
        (tensor((n, 64)), tensor((128, 64)), tensor((n, 128))),
        (tensor((b, n, 64)), tensor((128, 64)), tensor((b, n, 128))),
        (tensor((64,)), tensor((128, 64)), tensor((128,))),
        (ndim_only(2), tensor((128, 64)), ndim_only(2)),
        (tensor((n, 64)), ndim_only(2), ndim_only(2)),
    ],
)
def test_linear_deduction(deduce, x, w, expected):
    assert deduce(ops.linear, x, w) == expected


@pytest.mark.parametrize(
    "x, w, message",
    [
        (
            tensor((n, 64)),
            tensor((64, 128)),
            r"linear: input features differ: x \(n, 64\) has 64, weight \[out, in\] \(64, 128\) has 128",
        ),
        (tensor((n, 64)), tensor((2, 128, 64)), "the weight must be 2-d"),
    ],
)
def test_linear_conflicts(deduce, x, w, message):
    with pytest.raises(ShapeError, match=message):
        deduce(ops.linear, x, w)


@pytest.mark.parametrize("symbolic", [False, True])
def test_linear_runs(run_op, rng, symbolic):
    x = rng.standard_normal((2, 5, 8)).astype("float32")
    w = rng.standard_normal((3, 8)).astype("float32")
    np.testing.assert_allclose(run_op(ops.linear, x, w, symbolic=symbolic), x @ w.T, rtol=1e-5, atol=1e-6)
