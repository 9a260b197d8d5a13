"""Tensor expressions: compute / reduce lowered to PrimFuncs, run by the tir interpreter."""

import numpy as np
import pytest

from llm_deploy.compiler import te, tir
from llm_deploy.compiler.shape import SymVar, var
from llm_deploy.compiler.tir_interpreter import run

n, m = var("n"), var("m")
rng = np.random.default_rng(0)


def _rand(*shape, dtype="float32"):
    return rng.standard_normal(shape).astype(dtype)


def test_compute_is_one_perfect_loop_nest_named_after_fn_params():
    A = te.placeholder((n, 4), "float32", "A")
    B = te.compute((n, 4), lambda row, col: A[row, col] * 2.0, "B")
    func = te.create_prim_func([A, B])
    Abuf, Bbuf = func.params
    row, col = SymVar("row"), SymVar("col")
    assert func.body == tir.For(row, n, tir.For(col, 4, tir.Store(Bbuf, (row, col), Abuf[row, col] * 2.0)))
    assert func.scalars == ()


def test_matmul_with_reduction_one_prim_func_for_every_n():
    A = te.placeholder((n, 8), "float32", "A")
    W = te.placeholder((8, 5), "float32", "W")
    k = te.reduce_axis(8, "k")
    C = te.compute((n, 5), lambda i, j: te.sum(A[i, k] * W[k, j], axis=k), "C")
    func = te.create_prim_func([A, W, C])
    # for i: for j: allocate acc: acc = 0; for k: acc += ...; C[i, j] = acc
    nest = func.body
    assert isinstance(nest, tir.For) and isinstance(nest.body, tir.For)
    alloc = nest.body.body
    assert isinstance(alloc, tir.Allocate) and alloc.buffer.scope == "local"
    init, update, store = alloc.body.stmts
    assert isinstance(update, tir.For) and update.var == SymVar("k")
    assert isinstance(store, tir.Store) and store.buffer.name == "C"
    w = _rand(8, 5)
    for nv in (1, 3, 6):
        a, c = _rand(nv, 8), np.empty((nv, 5), "float32")
        run(func, a, w, c)
        np.testing.assert_allclose(c, a @ w, rtol=1e-5, atol=1e-6)


def test_chained_computes_become_allocated_intermediates():
    # softmax over rows: max, exp-sum, divide; max and sum are intermediates (n,)
    X = te.placeholder((n, m), "float32", "X")
    k = te.reduce_axis(m, "k")
    mx = te.compute((n,), lambda i: te.max(X[i, k], axis=k), "mx")
    k2 = te.reduce_axis(m, "k")
    den = te.compute((n,), lambda i: te.sum(tir.intrin("exp", X[i, k2] - mx[i]), axis=k2), "den")
    Y = te.compute((n, m), lambda i, j: tir.intrin("exp", X[i, j] - mx[i]) / den[i], "Y")
    func = te.create_prim_func([X, Y])
    assert [b.name for b in func.buffers] == ["X", "Y"]
    outer = func.body
    assert isinstance(outer, tir.Allocate) and outer.buffer.name == "mx" and outer.buffer.shape == (n,)
    for nv, mv in ((1, 1), (2, 5), (4, 3)):
        x, y = _rand(nv, mv), np.empty((nv, mv), "float32")
        run(func, x, y)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-5)


def test_reduction_inside_an_expression_and_over_two_axes():
    X = te.placeholder((n, 3, 4), "float32", "X")
    a, b = te.reduce_axis(3, "a"), te.reduce_axis(4, "b")
    mean = te.compute((n,), lambda i: te.sum(X[i, a, b], axis=[a, b]) / 12.0, "mean")
    func = te.create_prim_func([X, mean])
    x, out = _rand(5, 3, 4), np.empty(5, "float32")
    run(func, x, out)
    np.testing.assert_allclose(out, x.mean(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("reducer,ref", [(te.max, np.max), (te.min, np.min), (te.prod, np.prod)])
def test_reducers(reducer, ref):
    X = te.placeholder((n, 6), "float32", "X")
    k = te.reduce_axis(6, "k")
    Y = te.compute((n,), lambda i: reducer(X[i, k], axis=k), "Y")
    func = te.create_prim_func([X, Y])
    x, y = _rand(4, 6), np.empty(4, "float32")
    run(func, x, y)
    np.testing.assert_allclose(y, ref(x, axis=1), rtol=1e-5)


@pytest.mark.parametrize("reducer,ref", [(te.argmax, np.argmax), (te.argmin, np.argmin)])
def test_arg_reducers_take_the_first_extreme(reducer, ref):
    X = te.placeholder((n, 6), "float32", "X")
    k = te.reduce_axis(6, "k")
    Y = te.compute((n,), lambda i: reducer(X[i, k], axis=k), "Y")
    func = te.create_prim_func([X, Y])
    x = rng.integers(0, 3, (7, 6)).astype("float32")  # many ties
    y = np.empty(7, "int64")
    run(func, x, y)
    np.testing.assert_array_equal(y, ref(x, axis=1))


def test_sum_accumulates_in_a_wider_dtype():
    X = te.placeholder((n,), "float16", "X")
    k = te.reduce_axis(n, "k")
    Y = te.compute(
        (1,), lambda i: tir.cast("float16", te.sum(tir.cast("float32", X[k]), axis=k, dtype="float32")), "Y"
    )
    func = te.create_prim_func([X, Y])
    acc = func.body.body  # For i: Allocate acc
    assert acc.buffer.dtype == "float32"
    x = np.full(4096, 1.0, "float16")  # float16 alone would stop counting at 2048
    y = np.empty(1, "float16")
    run(func, x, y)
    assert y[0] == 4096


def test_gather_by_computed_index_is_let_bound():
    W = te.placeholder((m, 4), "float32", "W")
    ids = te.placeholder((n,), "int32", "ids")
    Out = te.compute((n, 4), lambda i, j: W[ids[i], j], "Out")
    func = te.create_prim_func([W, ids, Out])
    let = func.body.body.body
    assert isinstance(let, tir.Let) and let.value == tir.cast("int64", func.params[1][SymVar("i")])
    w, idv = _rand(6, 4), np.array([5, 0, 3], "int32")
    out = np.empty((3, 4), "float32")
    run(func, w, idv, out)
    np.testing.assert_array_equal(out, w[idv])


def test_if_then_else_is_lazy_and_becomes_if_statements():
    # concat along axis 0: reading A[i] for i >= n would be out of bounds, so no eager select
    A = te.placeholder((n, 2), "float32", "A")
    B = te.placeholder((m, 2), "float32", "B")
    C = te.compute(
        (n + m, 2), lambda i, j: te.if_then_else(tir.binary("lt", i, n), A[i, j], B[i - n, j]), "C"
    )
    func = te.create_prim_func([A, B, C])
    assert isinstance(func.body.body.body, tir.IfThenElse)
    for nv, mv in ((1, 3), (4, 2)):
        a, b = _rand(nv, 2), _rand(mv, 2)
        c = np.empty((nv + mv, 2), "float32")
        run(func, a, b, c)
        np.testing.assert_array_equal(c, np.concatenate([a, b]))


def test_symbolic_vars_no_buffer_binds_become_scalar_params():
    # Out[i] = A[i + off] for i < m: `off` is read only in an index, so it is a scalar param
    off = var("off")
    A = te.placeholder((n,), "float32", "A")
    Out = te.compute((m,), lambda i: A[i + off], "Out")
    func = te.create_prim_func([A, Out])
    assert func.scalars == (off,)
    out = np.empty(2, "float32")
    run(func, np.arange(6, dtype="float32"), out, 3)
    assert out.tolist() == [3, 4]


def test_loop_vars_never_capture_a_symbolic_dim_of_the_same_name():
    # the user calls the index `n`, which is also the symbolic dim: the loop var is renamed
    A = te.placeholder((n,), "float32", "A")
    B = te.compute((n,), lambda n_: A[n_], "B")
    C = te.compute((n,), lambda n: B[n] + 1.0, "C")  # noqa: F811
    func = te.create_prim_func([A, C])
    loops = [s.var.name for s in func.body.body.stmts]
    assert "n" not in loops
    out = np.empty(3, "float32")
    run(func, np.arange(3, dtype="float32"), out)
    assert out.tolist() == [1, 2, 3]


def test_errors_name_the_tensor():
    A = te.placeholder((n,), "float32", "A")
    B = te.placeholder((n,), "float32", "B")
    C = te.compute((n,), lambda i: A[i] + B[i], "C")
    with pytest.raises(te.TEError, match="compute C reads placeholder B, which is not a parameter"):
        te.create_prim_func([A, C])
    with pytest.raises(te.TEError, match="A has 1 dims but is indexed with 2"):
        A[0, 0]
    with pytest.raises(te.TEError, match="no compute among"):
        te.create_prim_func([A, B])
    nested = te.compute((n,), lambda i: te.if_then_else(tir.binary("lt", i, 1), A[i], B[i]) * 2.0, "D")
    with pytest.raises(te.TEError, match="if_then_else must be the whole compute body"):
        te.create_prim_func([A, B, nested])


def test_identical_definitions_give_equal_prim_funcs():
    def build():
        A = te.placeholder((n, 4), "float32", "A")
        k = te.reduce_axis(4, "k")
        return te.create_prim_func([A, te.compute((n,), lambda i: te.sum(A[i, k], axis=k), "Out")])

    assert build() == build() and hash(build()) == hash(build())
