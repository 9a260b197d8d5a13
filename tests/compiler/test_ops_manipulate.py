"""Layout ops: deduction (symbolic, partially known, conflicting) and interpreter vs numpy."""

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import GetItem, Var
from llm_deploy.compiler.ops import ShapeError
from llm_deploy.compiler.struct_info import TensorInfo, TupleInfo, tensor

n, m = S.var("n"), S.var("m")


def ndim_only(ndim, dtype="float32"):
    return TensorInfo(None, dtype, ndim)


# -- permute_dims


@pytest.mark.parametrize(
    "x, axes, expected",
    [
        (tensor((n, 4, m)), (2, 0, 1), tensor((m, n, 4))),
        (tensor((n, 4)), None, tensor((4, n))),
        (tensor((n, 4, m)), (-1, 1, 0), tensor((m, 4, n))),
        (ndim_only(3), (1, 0, 2), ndim_only(3)),
        (ndim_only(-1), (1, 0), ndim_only(2)),
    ],
)
def test_permute_dims_deduction(deduce, x, axes, expected):
    assert deduce(lambda p: ops.permute_dims(p, axes), x) == expected


@pytest.mark.parametrize(
    "axes, message",
    [((0, 0, 1), "repeated axis"), ((0, 1), "do not fit a tensor of rank 3"), ((0, 1, 3), "out of range")],
)
def test_permute_dims_bad_axes(deduce, axes, message):
    with pytest.raises(ShapeError, match=message):
        deduce(lambda p: ops.permute_dims(p, axes), tensor((n, 4, m)))


@pytest.mark.parametrize("symbolic", [False, True])
def test_permute_dims_runs(run_op, rng, symbolic):
    a = rng.standard_normal((2, 3, 4)).astype("float32")
    np.testing.assert_array_equal(
        run_op(lambda p: ops.permute_dims(p, (2, 0, 1)), a, symbolic=symbolic), a.transpose(2, 0, 1)
    )
    np.testing.assert_array_equal(run_op(ops.permute_dims, a, symbolic=symbolic), a.T)


# -- reshape


@pytest.mark.parametrize(
    "x, new, expected",
    [
        (tensor((n, 64)), (n, 4, 16), tensor((n, 4, 16))),
        (tensor((n, 4, 16)), (n, -1), tensor((n, 64))),
        (tensor((n, 4, 16)), (-1, 16), tensor((4 * n, 16))),
        (tensor((n, m)), (m, n), tensor((m, n))),
        # Not provably equal element counts (n vs m) are left to the run-time check.
        (tensor((n, 4)), (m, 4), tensor((m, 4))),
        (ndim_only(2), (n, -1), ndim_only(2)),
        (ndim_only(2), (n, 4, 16), tensor((n, 4, 16))),
    ],
)
def test_reshape_deduction(deduce, x, new, expected):
    assert deduce(lambda p: ops.reshape(p, new), x) == expected


@pytest.mark.parametrize(
    "x, new, message",
    [
        (tensor((n, 64)), (n, 32), r"reshape: cannot reshape \(n, 64\) \(64 \* n elements\) into \(n, 32\)"),
        (tensor((10,)), (3, -1), r"cannot reshape \(10,\) into \(3, -1\): 10 elements do not divide"),
        (tensor((n, 4)), (-1, -1), "at most one -1"),
        (tensor((n, 4)), (n, -2), "at most one -1 and no other negatives"),
    ],
)
def test_reshape_conflicts(deduce, x, new, message):
    with pytest.raises(ShapeError, match=message):
        deduce(lambda p: ops.reshape(p, new), x, bounds={"n": (1, 4096)})


def test_reshape_of_possibly_empty_tensors_is_not_a_conflict(deduce):
    # With n == 0 both sides have no elements, so only a bound n >= 1 makes this an error.
    assert deduce(lambda p: ops.reshape(p, (n, 32)), tensor((n, 64))) == tensor((n, 32))


def test_reshape_to_a_shape_var(deduce):
    from llm_deploy.compiler.struct_info import ShapeInfo

    info = deduce(ops.reshape, tensor((n, 4)), ShapeInfo(ndim=3))
    assert info == ndim_only(3)


@pytest.mark.parametrize("symbolic", [False, True])
def test_reshape_runs(run_op, rng, symbolic):
    a = rng.standard_normal((6, 4)).astype("float32")
    np.testing.assert_array_equal(
        run_op(lambda p: ops.reshape(p, (-1,)), a, symbolic=symbolic), a.reshape(-1)
    )
    np.testing.assert_array_equal(
        run_op(lambda p: ops.reshape(p, (3, 2, 4)), a, symbolic=symbolic), a.reshape(3, 2, 4)
    )
    d0 = S.var("d0_0")
    if symbolic:
        out = run_op(lambda p: ops.reshape(p, (d0, 2, -1)), a, symbolic=True)
        np.testing.assert_array_equal(out, a.reshape(6, 2, 2))


# -- broadcast_to


@pytest.mark.parametrize(
    "x, target, expected",
    [
        (tensor((1, 4)), (n, 4), tensor((n, 4))),
        (tensor((4,)), (m, n, 4), tensor((m, n, 4))),
        (tensor((3, 4)), (n, 4), tensor((n, 4))),  # n may be 3: checked at run time
        (ndim_only(2), (n, 4), tensor((n, 4))),
    ],
)
def test_broadcast_to_deduction(deduce, x, target, expected):
    assert deduce(lambda p: ops.broadcast_to(p, target), x) == expected


@pytest.mark.parametrize(
    "x, target, message",
    [
        (tensor((3, 4)), (5, 4), r"broadcast_to: cannot broadcast \(3, 4\) to \(5, 4\) \(dim 0: 3 vs 5\)"),
        (tensor((n, 4)), (n, 8), r"dim 1: 4 vs 8"),
        (tensor((2, 3, 4)), (3, 4), "fewer dims"),
    ],
)
def test_broadcast_to_conflicts(deduce, x, target, message):
    with pytest.raises(ShapeError, match=message):
        deduce(lambda p: ops.broadcast_to(p, target), x)


def test_broadcast_to_runs(run_op, rng):
    a = rng.standard_normal((1, 4)).astype("float32")
    np.testing.assert_array_equal(
        run_op(lambda p: ops.broadcast_to(p, (2, 3, 4)), a), np.broadcast_to(a, (2, 3, 4))
    )


# -- expand_dims / squeeze


@pytest.mark.parametrize(
    "x, axis, expected",
    [
        (tensor((n, 4)), [0, 2], tensor((1, n, 1, 4))),
        (tensor((n, 4)), -1, tensor((n, 4, 1))),
        (tensor((n, 4)), 1, tensor((n, 1, 4))),
        (ndim_only(2), 0, ndim_only(3)),
        (ndim_only(-1), 0, ndim_only(-1)),
    ],
)
def test_expand_dims_deduction(deduce, x, axis, expected):
    assert deduce(lambda p: ops.expand_dims(p, axis), x) == expected


def test_expand_dims_bad_axis(deduce):
    with pytest.raises(ShapeError, match="expand_dims: axis 3 out of range for a tensor of rank 3"):
        deduce(lambda p: ops.expand_dims(p, 3), tensor((n, 4)))


@pytest.mark.parametrize(
    "x, axis, expected",
    [
        (tensor((1, n, 1, 4)), [0, 2], tensor((n, 4))),
        (tensor((1, n, 1, 4)), -2, tensor((1, n, 4))),
        (tensor((1, 3, 1, 4)), None, tensor((3, 4))),
        (tensor((1, n, 4)), None, ndim_only(-1)),  # n may be 1: the rank is not known
        (tensor((n, 4)), 0, tensor((4,))),  # n must be 1 at run time
        (ndim_only(3), 0, ndim_only(2)),
    ],
)
def test_squeeze_deduction(deduce, x, axis, expected):
    assert deduce(lambda p: ops.squeeze(p, axis), x) == expected


def test_squeeze_of_a_dim_that_is_not_one(deduce):
    with pytest.raises(ShapeError, match=r"squeeze: dim 1 of \(1, 4\) is 4, not 1"):
        deduce(lambda p: ops.squeeze(p, 1), tensor((1, 4)))


@pytest.mark.parametrize("symbolic", [False, True])
def test_expand_and_squeeze_run(run_op, rng, symbolic):
    a = rng.standard_normal((1, 3, 1, 4)).astype("float32")
    np.testing.assert_array_equal(run_op(lambda p: ops.squeeze(p), a, symbolic=symbolic), a.reshape(3, 4))
    np.testing.assert_array_equal(
        run_op(lambda p: ops.squeeze(p, [0, 2]), a, symbolic=symbolic), a.reshape(3, 4)
    )
    np.testing.assert_array_equal(
        run_op(lambda p: ops.expand_dims(p, [0, -1]), a, symbolic=symbolic), a.reshape(1, 1, 3, 1, 4, 1)
    )


# -- concat / split


@pytest.mark.parametrize(
    "xs, axis, expected",
    [
        ([tensor((n, 4)), tensor((m, 4))], 0, tensor((n + m, 4))),
        ([tensor((n, 4)), tensor((n, 8)), tensor((n, 1))], -1, tensor((n, 13))),
        ([tensor((n, 4)), ndim_only(2)], 0, ndim_only(2)),
        ([ndim_only(-1), ndim_only(-1)], 0, ndim_only(-1)),
    ],
)
def test_concat_deduction(deduce, xs, axis, expected):
    assert deduce(lambda *ps: ops.concat(ps, axis), *xs) == expected


@pytest.mark.parametrize(
    "xs, message",
    [
        ([tensor((n, 4)), tensor((n, 5))], r"concat: dim 1 of operands 0 and 1 must match \(4 vs 5\)"),
        ([tensor((n, 4)), tensor((n, 4, 1))], "concat: ranks differ"),
        ([tensor((n, 4)), tensor((n, 4), "float16")], "dtypes differ"),
    ],
)
def test_concat_conflicts(deduce, xs, message):
    with pytest.raises(ShapeError, match=message):
        deduce(lambda *ps: ops.concat(ps, 0), *xs)


@pytest.mark.parametrize(
    "x, spec, axis, expected",
    [
        (tensor((n, 12)), 3, 1, [tensor((n, 4))] * 3),
        (tensor((10, n)), [2, 5], 0, [tensor((2, n)), tensor((3, n)), tensor((5, n))]),
        (tensor((3 * n,)), 3, 0, [tensor((n,))] * 3),
        (tensor((n,)), [2], 0, [tensor((2,)), tensor((n - 2,))]),
        (ndim_only(2), 2, 0, [ndim_only(2)] * 2),
    ],
)
def test_split_deduction(deduce, x, spec, axis, expected):
    assert deduce(lambda p: ops.split(p, spec, axis), x) == TupleInfo(tuple(expected))


@pytest.mark.parametrize(
    "x, spec, message",
    [
        (tensor((10,)), 3, r"split: dim 0 of \(10,\) \(10\) is not divisible by 3"),
        (tensor((10,)), [4, 2], "must be increasing"),
        (tensor((10,)), [4, 12], "within dim 0"),
    ],
)
def test_split_conflicts(deduce, x, spec, message):
    with pytest.raises(ShapeError, match=message):
        deduce(lambda p: ops.split(p, spec), x)


def test_split_items_keep_symbolic_shapes():
    x = Var("x", tensor((n, 3 * m)))
    bb = BlockBuilder()
    with bb.function("f", [x]):
        parts = bb.emit(ops.split(x, 3, axis=1))
        second = bb.emit(GetItem(parts, 1))
        bb.emit_func_output(second)
    assert second.info == tensor((n, m))


@pytest.mark.parametrize("symbolic", [False, True])
def test_concat_and_split_run(run_op, rng, symbolic):
    a = rng.standard_normal((2, 3)).astype("float32")
    b = rng.standard_normal((2, 5)).astype("float32")
    np.testing.assert_array_equal(
        run_op(lambda p, q: ops.concat([p, q], 1), a, b, symbolic=symbolic), np.concatenate([a, b], 1)
    )
    parts = run_op(lambda p: ops.split(p, [1, 4], axis=1), b, symbolic=symbolic)
    assert isinstance(parts, tuple) and len(parts) == 3
    for got, want in zip(parts, np.split(b, [1, 4], axis=1)):
        np.testing.assert_array_equal(got, want)


# -- strided_slice


@pytest.mark.parametrize(
    "x, axes, begin, end, strides, expected",
    [
        (tensor((n, 8)), [1], [2], [6], None, tensor((n, 4))),
        (tensor((n, 8)), [1], [0], [8], [2], tensor((n, 4))),
        (tensor((n, 8)), [1], [1], [8], [3], tensor((n, 3))),
        (tensor((n, 8)), [-1], [-3], [8], None, tensor((n, 3))),
        (tensor((n, 8)), [1], [0], [100], None, tensor((n, 8))),  # clamped like Python slicing
        (tensor((n, 8)), [1], [6], [2], None, tensor((n, 0))),
        (tensor((n, 8)), [0, 1], [0, 0], [n, 4], None, tensor((n, 4))),
        (ndim_only(2), [1], [0], [4], None, ndim_only(2)),
    ],
)
def test_strided_slice_deduction(deduce, x, axes, begin, end, strides, expected):
    assert deduce(lambda p: ops.strided_slice(p, axes, begin, end, strides), x) == expected


def test_strided_slice_symbolic_bounds(deduce):
    """x[n-1:n] of an (n, 8) tensor: one row when n >= 1, none when n == 0; the deduced extent
    says exactly that, and with a bound n >= 1 it folds to 1."""
    info = deduce(lambda p: ops.strided_slice(p, [0], [n - 1], [n]), tensor((n, 8)))
    assert [S.evaluate(info.shape[0], {"n": v}) for v in (0, 1, 5)] == [0, 1, 1]
    x = Var("x", tensor((n, 8)))
    bb = BlockBuilder()
    with bb.function("f", [x], attrs={"bounds": {"n": (1, 4096)}}):
        last = bb.emit(ops.strided_slice(x, [0], [n - 1], [n]))
        bb.emit_func_output(last)
    assert last.info == tensor((1, 8))


@pytest.mark.parametrize(
    "axes, begin, end, strides, message",
    [
        ([1], [0], [4], [0], "strides must be positive"),
        ([1], [0, 0], [4], None, "begin has 2 entries for 1 axes"),
        ([2], [0], [4], None, "axis 2 out of range"),
    ],
)
def test_strided_slice_bad_arguments(deduce, axes, begin, end, strides, message):
    with pytest.raises(ShapeError, match=message):
        deduce(lambda p: ops.strided_slice(p, axes, begin, end, strides), tensor((n, 8)))


@pytest.mark.parametrize("symbolic", [False, True])
def test_strided_slice_runs(run_op, rng, symbolic):
    a = rng.standard_normal((5, 8)).astype("float32")
    cases = [
        ([1], [1], [8], [3], a[:, 1:8:3]),
        ([0, 1], [-2, 0], [5, 100], None, a[-2:5, 0:100]),
        ([1], [6], [2], None, a[:, 6:2]),
    ]
    for axes, begin, end, strides, want in cases:
        make = lambda p, spec=(axes, begin, end, strides): ops.strided_slice(p, *spec)  # noqa: E731
        np.testing.assert_array_equal(run_op(make, a, symbolic=symbolic), want)
    if symbolic:
        d0 = S.var("d0_0")
        got = run_op(lambda p: ops.strided_slice(p, [0], [d0 - 1], [d0]), a, symbolic=True)
        np.testing.assert_array_equal(got, a[-1:])


# -- take


@pytest.mark.parametrize(
    "x, idx, axis, expected",
    [
        (tensor((100, 64)), tensor((n,), "int32"), 0, tensor((n, 64))),
        (tensor((n, 8)), tensor((3,), "int64"), 1, tensor((n, 3))),
        (tensor((100, 64)), tensor((m, n), "int32"), 0, tensor((m, n, 64))),
        (tensor((100, 64)), tensor((), "int32"), 0, tensor((64,))),
        (tensor((100, 64)), ndim_only(1, "int32"), 0, ndim_only(2)),
        (tensor((100, 64)), ndim_only(-1, "int32"), 0, ndim_only(-1)),
    ],
)
def test_take_deduction(deduce, x, idx, axis, expected):
    assert deduce(lambda p, i: ops.take(p, i, axis), x, idx) == expected


def test_take_needs_integer_indices(deduce):
    with pytest.raises(ShapeError, match="take: indices must be integers, got float32"):
        deduce(ops.take, tensor((100, 64)), tensor((n,)))


@pytest.mark.parametrize("symbolic", [False, True])
def test_take_runs(run_op, rng, symbolic):
    table = rng.standard_normal((10, 4)).astype("float32")
    ids = np.array([3, 0, 9, 3], dtype="int32")
    np.testing.assert_array_equal(run_op(ops.take, table, ids, symbolic=symbolic), table[ids])
    np.testing.assert_array_equal(
        run_op(lambda p, i: ops.take(p, i, axis=1), table, ids[:2], symbolic=symbolic), table[:, [3, 0]]
    )
