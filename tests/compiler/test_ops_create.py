"""full / zeros / ones / arange / causal_mask: symbolic sizes, deduction and execution."""

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Var
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.ops import ShapeError
from llm_deploy.compiler.struct_info import PrimInfo, ShapeInfo, TensorInfo, tensor

n, m = S.var("n"), S.var("m")


def with_n(make, bounds=None):
    """f(x (n,), k: int = m) = make(): n and m defined by the parameters; returns (module, var)."""
    x, k = Var("x", tensor((n,))), Var("k", PrimInfo("int64", m))
    bb = BlockBuilder()
    with bb.function("f", [x, k], attrs={"bounds": bounds} if bounds else None):
        out = bb.emit(make(x, k))
        bb.emit_func_output(out)
    return bb.get(), out


def run_with(make, n_value, m_value=0):
    mod, _ = with_n(make)
    return run(mod, "f", np.zeros(n_value, "float32"), m_value)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x, k: ops.zeros((n, 4)), tensor((n, 4))),
        (lambda x, k: ops.ones((2, n + m), "int32"), tensor((2, n + m), "int32")),
        (lambda x, k: ops.full((n,), 7, "int64"), tensor((n,), "int64")),
        (lambda x, k: ops.full((), 1.5), tensor(())),
    ],
)
def test_filled_deduction(make, expected):
    assert with_n(make)[1].info == expected


def test_filled_from_a_shape_of_unknown_values(deduce):
    assert deduce(lambda s: ops.zeros(s), ShapeInfo(ndim=2)) == TensorInfo(None, "float32", 2)


def test_filled_bad_dtype():
    with pytest.raises(ShapeError, match="zeros: unknown dtype 'float8'"):
        with_n(lambda x, k: ops.zeros((n,), "float8"))


def test_filled_run():
    np.testing.assert_array_equal(
        run_with(lambda x, k: ops.full((n, m), 2.5), 3, 2), np.full((3, 2), 2.5, "float32")
    )
    got = run_with(lambda x, k: ops.ones((2, n), "int32"), 4)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, np.ones((2, 4), "int32"))
    np.testing.assert_array_equal(run_with(lambda x, k: ops.zeros((n,)), 5), np.zeros(5, "float32"))


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x, k: ops.arange(n), tensor((n,), "int64")),
        (lambda x, k: ops.arange(0, 10, 3), tensor((4,), "int64")),
        (lambda x, k: ops.arange(10, 0, -3), tensor((4,), "int64")),
        (lambda x, k: ops.arange(m, m + n, dtype="int32"), tensor((n,), "int32")),
        (lambda x, k: ops.arange(k, n + m), tensor((n,), "int64")),
        (lambda x, k: ops.arange(0, n, k), TensorInfo(None, "int64", 1)),  # symbolic step
    ],
)
def test_arange_deduction(make, expected):
    assert with_n(make)[1].info == expected


def test_arange_length_is_clamped_at_zero():
    info = with_n(lambda x, k: ops.arange(2, n))[1].info
    assert [S.evaluate(info.shape[0], {"n": v}) for v in (0, 2, 5)] == [0, 0, 3]
    assert with_n(lambda x, k: ops.arange(2, n), bounds={"n": (2, 100)})[1].info == tensor((n - 2,), "int64")


def test_arange_zero_step():
    with pytest.raises(ShapeError, match="arange: step must not be 0"):
        with_n(lambda x, k: ops.arange(0, n, 0))


@pytest.mark.parametrize(
    "make, n_value, m_value, want",
    [
        (lambda x, k: ops.arange(n), 5, 0, np.arange(5)),
        (lambda x, k: ops.arange(k, n + m), 4, 3, np.arange(3, 7)),
        (lambda x, k: ops.arange(10, 0, -3), 1, 0, np.arange(10, 0, -3)),
        (lambda x, k: ops.arange(2, n, dtype="float32"), 6, 0, np.arange(2, 6, dtype="float32")),
        (lambda x, k: ops.arange(0, n, k), 10, 3, np.arange(0, 10, 3)),
    ],
)
def test_arange_runs(make, n_value, m_value, want):
    got = run_with(make, n_value, m_value)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda x, k: ops.causal_mask(n), tensor((n, n), "bool")),
        (lambda x, k: ops.causal_mask(n, n + m, dtype="float32"), tensor((n, n + m))),
        (lambda x, k: ops.causal_mask(n, m, offset=k), tensor((n, m), "bool")),
    ],
)
def test_causal_mask_deduction(make, expected):
    assert with_n(make)[1].info == expected


def test_causal_mask_needs_an_integer_offset():
    with pytest.raises(ShapeError, match="causal_mask: the offset must be a scalar"):
        with_n(lambda x, k: ops.causal_mask(n, m, offset=x))


@pytest.mark.parametrize("n_value, m_value", [(1, 0), (4, 0), (3, 2), (5, 4)])
def test_causal_mask_runs(n_value, m_value):
    # Queries are the last n of n + m positions: query i sees keys 0..m + i.
    got = run_with(lambda x, k: ops.causal_mask(n, n + m), n_value, m_value)
    want = np.tril(np.ones((n_value, n_value + m_value), bool), k=m_value)
    np.testing.assert_array_equal(got, want)
    additive = run_with(lambda x, k: ops.causal_mask(n, n + m, dtype="float32"), n_value, m_value)
    np.testing.assert_array_equal(additive, np.where(want, 0, np.finfo("float32").min).astype("float32"))
    explicit = run_with(lambda x, k: ops.causal_mask(n, n, offset=k), n_value, m_value)
    np.testing.assert_array_equal(explicit, np.tril(np.ones((n_value, n_value), bool), k=m_value))
